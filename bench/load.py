#!/usr/bin/env python3
"""The load check (issue #7, item 5): many concurrent edges against one serve-cloud, every reply checked.

Starts one ``cli.py serve-cloud`` process on this machine and ``--edges`` edges (default 32),
each with its own TCP connection speaking the real protocol (``runtime.edge.client.CloudConnection``),
each in its own process by default (spawn; ``--procs N`` packs them into N processes, a thread
per edge).  Every edge sends ``--requests`` (default 500) distinct activations at ``--split``
(default 20: the tail is one small layer, so the test is about the server, not the model) and
checks every reply::

    python bench/load.py --out /tmp/load                                  # 32 edges x 500 requests
    python bench/load.py --edges 8 --requests 50 --out /tmp/load-small
    python bench/load.py --out /tmp/load-b --server-arg=--max-batch --server-arg=8

Each request's activation is random, seeded by (--seed, edge, request index), so that a reply
sent to the wrong edge or for the wrong request cannot pass.  A reply is

* **mismatched** when it is not a RESULT for a request in flight on that connection, or its
  tensor is not the tail's output for that request's activation, computed beforehand in the
  edge's process with the same tail file (``load_part(manifest, "tail", "onnx")``, batch 1):
  max |diff| within atol 1e-5 + rtol 1e-4 x max |expected| (a bound on the tensor's scale, as
  export's verification uses: a batch rounds differently from a single request, by the same
  amount on every element) and the same argmax (unless the expected top two are within that
  tolerance of each other);
* **duplicated** when it answers a request that has already been answered (also looked for
  after each edge's last reply);
* and a request is **lost** when no RESULT comes for it: connection closed or reset, no reply
  within ``--timeout``, an ERROR frame instead, or not sent because the edge could not
  reconnect (an edge whose connection dies reconnects, at most 3 times, and goes on).

The server's RSS (psutil) is sampled every 0.2 s: before the edges connect, at the start of the
load (edges connected and warmed up), its peak, at the end (every edge done and disconnected),
and the growth over the run's second half (a leak grows steadily; warm-up growth does not).
Throughput is replies per second from the first request sent to the last reply; latency is
from send to the reply's arrival, per request.  The edges run on the same cores as the server,
so the table also gives the CPU seconds used during the load by the server, by the edges, and
by any other process on the machine (other work makes the timings slower and noisier; the
correctness and memory figures do not depend on it).

Prints a Markdown table and writes ``load.json`` (everything, including per-edge figures, the
RSS samples, and any errors), ``load.csv`` (one row) and ``load.png`` (latency histogram, RSS
over time) into ``--out``; the bundle is exported into ``--out/store`` if it is not there
(random weights).  Exits 1 if any reply was lost, mismatched or duplicated, the server's own
request count disagrees, or the RSS grew by more than ``--max-rss-growth-mb``.
"""
import argparse
import collections
import csv
import json
import os
import re
import select
import subprocess
import sys
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CLI = os.path.join(REPO, "cli.py")
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from runtime import launch  # noqa: E402

ENV = dict(os.environ, PYTHONUNBUFFERED="1")
MODEL = "resnet50"
RTOL, ATOL = 1e-4, 1e-5
MAX_RECONNECTS = 3
MAX_ERRORS_KEPT = 20  # per edge, in load.json
PROGRESS_EVERY = 25   # requests between an edge's progress messages
MIB = 1048576.0


def _say(message):
    sys.stderr.write("load: {}\n".format(message))
    sys.stderr.flush()


# ---------------------------------------------------------------- setup

def bundle_dir(store, split):
    return os.path.join(store, "{}-s{}".format(MODEL, split))


def prepare(out, split):
    """The store ``out/store`` with the random-weight bundle of ``split`` (exported if missing)."""
    store = os.path.join(out, "store")
    if not os.path.isfile(os.path.join(bundle_dir(store, split), "manifest.json")):
        _say("exporting split {} (random weights) into {}".format(split, store))
        subprocess.run([sys.executable, CLI, "export", "--split", str(split), "--random-init", "--out", store,
                        "--formats", "onnx"], check=True, stdout=subprocess.DEVNULL, cwd=REPO)
    return store


def make_input(shape, seed, edge, index):
    """The activation of request ``index`` of ``edge``: its own random tensor (batch 1), reproducible alone."""
    rng = np.random.default_rng([seed, edge, index])
    return rng.random((1,) + tuple(shape), dtype=np.float32) * 2.0


def load_tail(bundle):
    from runtime.backends import load_part
    from runtime.bundle.manifest import load_manifest
    manifest = load_manifest(bundle)
    return manifest, load_part(manifest, "tail", "onnx", "cpu", threads=1)


def compare(got, expected):
    """None if ``got`` is the expected tail output, else why not."""
    if got is None:
        return "no tensor"
    if got.shape != expected.shape or got.dtype != expected.dtype:
        return "{} {} instead of {} {}".format(got.dtype, list(got.shape), expected.dtype, list(expected.shape))
    tol = ATOL + RTOL * float(np.max(np.abs(expected)))
    diff = float(np.max(np.abs(got.astype(np.float64) - expected)))
    if not diff <= tol:
        return "max |diff| {:.3g}".format(diff)
    flat = expected.reshape(len(expected), -1)
    top = np.sort(flat, axis=1)[:, -2:]
    for row, (g, e) in enumerate(zip(got.reshape(len(got), -1).argmax(1), flat.argmax(1))):
        if g != e and top[row, 1] - top[row, 0] > tol:
            return "argmax {} instead of {}".format(int(g), int(e))
    return None


class Server(launch.Started):
    """``cli.py serve-cloud`` as a real subprocess on a free loopback port; its log is kept (runtime.launch)."""

    def __init__(self, store, extra=()):
        launch.Started.__init__(self, launch.cli_command("serve-cloud", "--port", "0", "--artifacts", store, *extra),
                                env=ENV, cwd=REPO)

    def stop(self):
        """SIGTERM (the server drains and logs its summary); returns (exit code, log text)."""
        return launch.Started.stop(self), self.log_text()


class RssSampler(object):
    """The RSS of one process every ``interval`` seconds, in a thread: [(time.time(), bytes)]."""

    def __init__(self, pid, interval=0.2):
        import psutil
        self.process = psutil.Process(pid)
        self.interval = interval
        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def sample(self):
        import psutil
        try:
            rss = self.process.memory_info().rss
        except psutil.Error:
            return None
        self.samples.append((time.time(), rss))
        return rss

    def cpu_s(self):
        """User + system CPU seconds the process has used so far."""
        import psutil
        try:
            t = self.process.cpu_times()
        except psutil.Error:
            return None
        return t.user + t.system

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def stop(self):
        self._stop.set()
        self._thread.join(5)


# ---------------------------------------------------------------- one edge

class Edge(object):
    """One edge: its own connection, its own activations and expected outputs, every reply checked."""

    def __init__(self, address, split, edge, requests, seed, inflight, timeout, tail, shape):
        self.address, self.split, self.edge = address, split, edge
        self.requests, self.inflight, self.timeout = requests, inflight, timeout
        self.tail, self.shape, self.seed = tail, shape, seed
        self.conn = None
        self.inputs = self.expected = None
        self.latencies = []
        self.answered = self.lost = self.mismatched = self.duplicated = self.out_of_order = 0
        self.error_replies = self.reconnects = self.exact = 0
        self.max_abs_diff = 0.0
        self.warmup_sent = self.warmup_ok = 0
        self.errors = []
        self.first_send = self.last_reply = None
        self._done_ids = set()  # request ids answered on the current connection

    def _error(self, text):
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append("edge {}: {}".format(self.edge, text))

    def prepare(self):
        """Activations and expected outputs, computed before the load starts (off the clock)."""
        self.inputs = [make_input(self.shape, self.seed, self.edge, i) for i in range(self.requests)]
        self.expected = [self.tail.run(x) for x in self.inputs]

    def connect(self):
        from runtime.edge.client import CloudConnection
        conn = None
        try:
            conn = CloudConnection(self.address, timeout=self.timeout)
            conn.hello({"role": "edge", "model": MODEL, "split": self.split, "bundle_id": None})
        except Exception as exc:
            if conn is not None:
                conn.sock.close()
            self._error("connect: {}: {}".format(type(exc).__name__, exc))
            self.conn = None
            return False
        self.conn = conn
        self._done_ids = set()
        return True

    def _drop(self, pending, why):
        """The connection is dead: every request in flight on it is lost."""
        self.lost += len(pending)
        self._error("{} ({} request(s) in flight lost)".format(why, len(pending)))
        pending.clear()
        try:
            self.conn.sock.close()
        except OSError:
            pass
        self.conn = None

    def warm(self, count):
        """``count`` requests of their own (seed offset), checked like the rest but counted apart."""
        for i in range(count):
            x = make_input(self.shape, self.seed + 1000003, self.edge, i)
            expected = self.tail.run(x)
            self.warmup_sent += 1
            if self.conn is None and not self.connect():
                continue
            try:
                frame, _, _ = self.conn.infer(x)
            except Exception as exc:
                self._drop({}, "warm-up request {}: {}: {}".format(i, type(exc).__name__, exc))
                continue
            why = compare(frame.array, expected)
            if why is None:
                self.warmup_ok += 1
            else:
                self._error("warm-up request {}: {}".format(i, why))

    def _read(self):
        """The next frame that is not a NOTICE (raises on a dead connection)."""
        from runtime.wire import codec
        while True:
            frame = self.conn.reader.read()
            if frame.type != codec.NOTICE:
                return frame

    def _check(self, frame, pending, arrived):
        from runtime.wire import codec
        rid = frame.request_id
        if frame.type == codec.ERROR:
            if rid in pending:  # an answer, but not a result: the request is lost
                pending.pop(rid)
                self.error_replies += 1
                self.lost += 1
                self._error("ERROR for request {}: {}".format(rid, frame.meta))
                return True
            return False  # a connection-level error: the server closes; the caller drops the connection
        if frame.type != codec.RESULT:
            self.mismatched += 1
            self._error("unexpected {} frame (request id {})".format(frame.type_name, rid))
            return True
        if rid not in pending:
            if rid in self._done_ids:
                self.duplicated += 1
                self._error("duplicate RESULT for request id {}".format(rid))
            else:
                self.mismatched += 1
                self._error("RESULT for request id {}, never sent on this connection".format(rid))
            return True
        if rid != next(iter(pending)):
            self.out_of_order += 1
        index, sent_at = pending.pop(rid)
        self._done_ids.add(rid)
        self.answered += 1
        self.latencies.append((arrived - sent_at) * 1000.0)
        self.last_reply = time.time()
        expected = self.expected[index]
        why = compare(frame.array, expected)
        if why is not None:
            self.mismatched += 1
            self._error("request {} (id {}): {}".format(index, rid, why))
        elif frame.array is not None:
            self.max_abs_diff = max(self.max_abs_diff, float(np.max(np.abs(frame.array - expected))))
            self.exact += int(np.array_equal(frame.array, expected))
        return True

    def run(self, progress=None):
        """Send every request (up to ``inflight`` at a time), check every reply."""
        from runtime.wire import codec
        pending = collections.OrderedDict()  # request id -> (index, perf_counter at send)
        index = 0
        reported = 0
        self.first_send = time.time()
        while index < self.requests or pending:
            if self.conn is None:
                if self.reconnects >= MAX_RECONNECTS or not self.connect():
                    break
                self.reconnects += 1
            try:
                while index < self.requests and len(pending) < self.inflight:
                    sent_at = time.perf_counter()
                    rid, _ = self.conn.request(codec.INFER, {}, self.inputs[index])
                    pending[rid] = (index, sent_at)
                    index += 1
                frame = self._read()
                arrived = time.perf_counter()
            except Exception as exc:  # PeerClosed, timeout, reset, bad frame: the connection is gone
                self._drop(pending, "{}: {}".format(type(exc).__name__, exc))
                continue
            if not self._check(frame, pending, arrived):
                self._drop(pending, "ERROR {}".format(frame.meta))
            if progress is not None and self.answered - reported >= PROGRESS_EVERY:
                progress(self.answered - reported)
                reported = self.answered
        self.lost += self.requests - index  # never sent: the edge could not reconnect
        if progress is not None and self.answered > reported:
            progress(self.answered - reported)
        self._trailing()
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _trailing(self, wait=0.25):
        """Anything the server sends after the last reply is a duplicate or unsolicited."""
        while self.conn is not None:
            if not self.conn.reader.buffered():
                try:
                    ready = select.select([self.conn.sock], [], [], wait)[0]
                except (OSError, ValueError):
                    return
                if not ready:
                    return
            try:
                frame = self._read()
            except Exception:  # closed: nothing more was sent
                return
            self._check(frame, {}, time.perf_counter())

    def result(self):
        return {"edge": self.edge, "requests": self.requests, "answered": self.answered, "lost": self.lost,
                "mismatched": self.mismatched, "duplicated": self.duplicated, "out_of_order": self.out_of_order,
                "error_replies": self.error_replies, "reconnects": self.reconnects, "exact": self.exact,
                "max_abs_diff": self.max_abs_diff, "warmup_sent": self.warmup_sent, "warmup_ok": self.warmup_ok,
                "first_send": self.first_send, "last_reply": self.last_reply, "latencies_ms": self.latencies,
                "errors": self.errors}


def worker(address, bundle, split, edges, requests, seed, inflight, timeout, warmup, start, queue):
    """One process holding ``edges`` (a thread each when more than one): prepare and connect, say
    ready, wait for ``start``, run, send each edge's result."""
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    try:
        manifest, tail = load_tail(bundle)
        shape = manifest["boundary"]["shape"][1:]
        clients = [Edge(address, split, e, requests, seed, inflight, timeout, tail, shape) for e in edges]
        for c in clients:
            c.prepare()
        for c in clients:
            if c.connect():
                c.warm(warmup)
    except Exception as exc:
        queue.put(("failed", list(edges), "{}: {}".format(type(exc).__name__, exc)))
        return
    queue.put(("ready", list(edges), None))
    start.wait()
    cpu = time.process_time()

    def progress(n):
        queue.put(("progress", n, None))
    if len(clients) == 1:
        clients[0].run(progress)
    else:
        threads = [threading.Thread(target=c.run, args=(progress,)) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    queue.put(("cpu", time.process_time() - cpu, None))  # before the results: the parent stops at the last
    for c in clients:
        queue.put(("done", c.result(), None))


# ---------------------------------------------------------------- the run

def _percentile(values, q):
    return float(np.percentile(values, q)) if len(values) else float("nan")


def _server_summary(log):
    """The counts in serve-cloud's shutdown summary line (None if it has none)."""
    m = re.search(r"summary: (\d+) connections, (\d+) requests, (\d+) samples.*errors: (.*)$", log, re.M)
    if not m:
        return None
    return {"connections": int(m.group(1)), "requests": int(m.group(2)), "samples": int(m.group(3)),
            "errors": m.group(4).strip()}


def run_load(store, split=20, edges=32, requests=500, server_args=(), procs=0, inflight=1, seed=0, timeout=30.0,
             warmup=1, interval=0.2, show_progress=True, deadline_s=None, via=None):
    """Run the load once; return the result dict (see ``summary_rows`` for the headline figures).

    ``via``: a function of the server's address that returns the address the edges dial instead
    (a proxy in front of the server, say); the server itself is always started here."""
    import multiprocessing
    import queue as queue_module
    bundle = bundle_dir(store, split)
    load_tail(bundle)  # onnxruntime's optimised-graph cache is written once, here, not by 32 processes at once
    procs = edges if procs <= 0 else min(procs, edges)
    groups = [list(range(i, edges, procs)) for i in range(procs)]
    deadline_s = deadline_s or 300.0 + edges * requests * 0.05
    server = Server(store, server_args)
    sampler = RssSampler(server.proc.pid, interval)
    rss_idle = sampler.sample()
    address = via(server.address) if via is not None else server.address
    context = multiprocessing.get_context("spawn")
    start, queue = context.Event(), context.Queue()
    workers = [context.Process(target=worker, args=(address, bundle, split, g, requests, seed, inflight,
                                                    timeout, warmup, start, queue), daemon=True) for g in groups]
    results, failures = {}, set()
    t_start = t_end = machine_start = harness_start = None
    cpu = {"edges_s": 0.0}
    rss_start = rss_end = cpu_start = cpu_end = None
    progress = None
    try:
        for w in workers:
            w.start()
        began = time.time()
        ready = 0
        while ready < len(workers):  # every edge connected and warmed up
            try:
                kind, what, why = queue.get(timeout=1.0)
            except queue_module.Empty:
                dead = [w for w in workers if w.exitcode is not None]
                if dead or time.time() - began > 300:
                    raise RuntimeError("an edge process {} before the load began (exit code {})".format(
                        "died" if dead else "hung", dead[0].exitcode if dead else None))
                continue
            if kind == "failed":
                raise RuntimeError("edges {} could not start: {}".format(what, why))
            ready += 1
        time.sleep(2 * interval)  # a sample of the connected, idle state
        rss_start = sampler.sample()
        cpu_start = sampler.cpu_s()
        if show_progress:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
            progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=Console(stderr=True), transient=True)
            progress.start()
            task = progress.add_task("{} edges x {} requests".format(edges, requests), total=edges * requests)
        machine_start, harness_start = _busy_cpu_s(), time.process_time()
        t_start = time.time()
        start.set()
        while len(set(results) | failures) < edges:
            try:
                kind, what, _ = queue.get(timeout=1.0)
            except queue_module.Empty:
                for g, w in zip(groups, workers):
                    missing = set(g) - set(results) - failures
                    if w.exitcode is not None and missing:
                        failures |= missing
                        _say("the process of edges {} exited ({}) without their results".format(
                            sorted(missing), w.exitcode))
                if time.time() - t_start > deadline_s:
                    missing = set(range(edges)) - set(results) - failures
                    failures |= missing
                    _say("deadline of {:.0f} s passed; edges {} unaccounted for".format(deadline_s, sorted(missing)))
                continue
            if kind == "progress" and progress is not None:
                progress.update(task, advance=what)
            elif kind == "cpu":
                cpu["edges_s"] += what
            elif kind == "done":
                results[what["edge"]] = what
                failures.discard(what["edge"])  # its results came after all
        t_end = time.time()
        cpu_end = sampler.cpu_s()
        cpu["machine_s"] = _busy_cpu_s() - machine_start
        cpu["edges_s"] += time.process_time() - harness_start  # this process: progress, queue, RSS sampling
        for w in workers:
            w.join(10)
        time.sleep(2 * interval)  # the server has closed the edges' connections
        rss_end = sampler.sample()
    finally:
        if progress is not None:
            progress.stop()
        sampler.stop()
        for w in workers:
            if w.is_alive():
                w.terminate()
        code, log = server.stop()
    return aggregate(results, failures, dict(split=split, edges=edges, requests=requests, procs=procs,
                                             inflight=inflight, seed=seed, timeout=timeout, warmup=warmup,
                                             server_args=[str(a) for a in server_args], server=server.address,
                                             dialled=address, cpus=os.cpu_count()),
                     sampler.samples, rss_idle, rss_start, rss_end, t_start, t_end, code, log,
                     None if cpu_start is None or cpu_end is None else cpu_end - cpu_start, cpu)


def aggregate(results, failures, config, samples, rss_idle, rss_start, rss_end, t_start, t_end, code, log,
              cpu_s=None, cpu=None):
    edges = [results[e] for e in sorted(results)]
    latencies = np.array([t for r in edges for t in r["latencies_ms"]])
    total = config["edges"] * config["requests"]
    answered = sum(r["answered"] for r in edges)
    lost = sum(r["lost"] for r in edges) + len(failures) * config["requests"]
    firsts = [r["first_send"] for r in edges if r["first_send"]]
    lasts = [r["last_reply"] for r in edges if r["last_reply"]]
    window = (max(lasts) - min(firsts)) if firsts and lasts else float("nan")
    during = [rss for t, rss in samples if t_start is not None and t_start <= t <= (t_end or t)]
    peak = max(during + [rss_start or 0, rss_end or 0]) if samples else None
    half = [rss for t, rss in samples if t_start is not None and t_end is not None
            and (t_start + t_end) / 2 <= t <= t_end]
    server = _server_summary(log)
    sent_to_server = sum(r["warmup_sent"] for r in edges) + total
    result = {
        "config": config,
        "requests": total,
        "answered": answered,
        "lost": lost,
        "mismatched": sum(r["mismatched"] for r in edges),
        "duplicated": sum(r["duplicated"] for r in edges),
        "out_of_order": sum(r["out_of_order"] for r in edges),
        "error_replies": sum(r["error_replies"] for r in edges),
        "reconnects": sum(r["reconnects"] for r in edges),
        "edges_without_results": sorted(failures),
        "exact_replies": sum(r["exact"] for r in edges),
        "max_abs_diff": max([r["max_abs_diff"] for r in edges] or [0.0]),
        "warmup_requests": sum(r["warmup_sent"] for r in edges),
        "warmup_ok": sum(r["warmup_ok"] for r in edges),
        "wall_s": window,
        "throughput_per_s": answered / window if window and window == window else float("nan"),
        "latency_ms": {"p50": _percentile(latencies, 50), "p90": _percentile(latencies, 90),
                       "p99": _percentile(latencies, 99), "max": float(latencies.max()) if len(latencies) else
                       float("nan"), "mean": float(latencies.mean()) if len(latencies) else float("nan")},
        "rss_mib": {"idle": _mib(rss_idle), "start": _mib(rss_start), "peak": _mib(peak), "end": _mib(rss_end),
                    "growth": _mib(rss_end - rss_start) if rss_end and rss_start else None,
                    "growth_second_half": _mib(half[-1] - half[0]) if len(half) > 1 else None},
        "server_cpu_s": cpu_s,
        # CPU seconds used during the load by the server, by the edges (and this harness), and by every other
        # process on the machine (other work sharing the cores makes the timings slower and noisier)
        "cpu_s": _cpu_split(cpu, cpu_s, (t_end - t_start) if t_start and t_end else None, config.get("cpus")),
        "server_cpu_us_per_request": cpu_s / answered * 1e6 if cpu_s is not None and answered else None,
        "server_summary": server,
        "server_exit_code": code,
        "server_requests_expected": sent_to_server,
        "errors": [e for r in edges for e in r["errors"]][:200],
        "per_edge": [{k: v for k, v in r.items() if k not in ("latencies_ms", "errors")} for r in edges],
        "rss_samples": [(round(t - (t_start or t), 3), rss) for t, rss in samples],
        "latencies_ms": latencies.tolist(),
    }
    if server is None:
        result["server_log_tail"] = log[-4000:]
    return result


def _busy_cpu_s():
    """Busy CPU seconds of the whole machine so far (all cores)."""
    import psutil
    t = psutil.cpu_times()
    return sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))


def _cpu_split(cpu, server_s, wall_s, cpus):
    if not cpu or "machine_s" not in cpu or server_s is None or not wall_s:
        return None
    return {"wall_s": wall_s, "available_s": wall_s * (cpus or 1), "machine_busy_s": cpu["machine_s"],
            "server_s": server_s, "edges_s": cpu["edges_s"],
            "other_s": max(0.0, cpu["machine_s"] - server_s - cpu["edges_s"])}


def _mib(value):
    return None if value is None else value / MIB


def verdict(result, max_growth_mib=200.0):
    """The list of failed checks (empty: all passed)."""
    failed = []
    for key in ("lost", "mismatched", "duplicated"):
        if result[key]:
            failed.append("{} {} replies".format(result[key], key))
    if result["warmup_ok"] != result["warmup_requests"]:
        failed.append("{} of {} warm-up replies bad".format(result["warmup_requests"] - result["warmup_ok"],
                                                           result["warmup_requests"]))
    if result["out_of_order"]:
        failed.append("{} replies out of order on their connection".format(result["out_of_order"]))
    server = result["server_summary"]
    if server is None:
        failed.append("serve-cloud logged no summary (exit code {})".format(result["server_exit_code"]))
    elif server["requests"] != result["server_requests_expected"]:
        failed.append("serve-cloud counted {} requests, the edges sent {}".format(
            server["requests"], result["server_requests_expected"]))
    growth = result["rss_mib"]["growth"]
    if growth is None or growth > max_growth_mib:
        failed.append("server RSS growth {} MiB (limit {:.0f})".format(
            "unknown" if growth is None else "{:.1f}".format(growth), max_growth_mib))
    return failed


# ---------------------------------------------------------------- output

def summary_rows(result):
    c, lat, rss = result["config"], result["latency_ms"], result["rss_mib"]
    server = result["server_summary"] or {}
    extra = " ".join(c["server_args"])
    return [
        ("setup", "{} edges x {} requests, split {}, inflight {}, {} edge process(es){}".format(
            c["edges"], c["requests"], c["split"], c["inflight"], c["procs"],
            "; serve-cloud " + extra if extra else "")),
        ("requests (answered)", "{} ({})".format(result["requests"], result["answered"])),
        ("lost", str(result["lost"])),
        ("mismatched", str(result["mismatched"])),
        ("duplicated", str(result["duplicated"])),
        ("replies bit-identical to the local tail", "{} (max abs diff {:.2g})".format(
            result["exact_replies"], result["max_abs_diff"])),
        ("serve-cloud's own count (incl. {} warm-up)".format(result["warmup_requests"]),
         "{} requests, errors: {}".format(server.get("requests", "?"), server.get("errors", "?"))),
        ("throughput", "{:.0f} requests/s over {:.2f} s".format(result["throughput_per_s"], result["wall_s"])),
        ("server CPU per request (user + system)", _fmt(result["server_cpu_us_per_request"], "{:.0f} us")),
        ("CPU used during the load: server / edges / other processes", "n/a" if not result["cpu_s"] else
         "{server_s:.1f} / {edges_s:.1f} / {other_s:.1f} s ({0} cores x {wall_s:.1f} s)".format(
             c.get("cpus"), **result["cpu_s"])),
        ("latency p50 / p99 / max", "{:.2f} / {:.2f} / {:.2f} ms".format(lat["p50"], lat["p99"], lat["max"])),
        ("server RSS idle / start / peak / end", " / ".join(
            _fmt(rss[k], "{:.1f}") for k in ("idle", "start", "peak", "end")) + " MiB"),
        ("server RSS growth: end - start; over the 2nd half", "{} MiB; {} MiB".format(
            *(_fmt(None if v is None else round(v, 1) + 0.0, "{:+.1f}")  # no "-0.0"
              for v in (rss["growth"], rss["growth_second_half"])))),
    ]


def _fmt(value, spec):
    return "n/a" if value is None else spec.format(value)


def format_table(result):
    lines = ["| load | value |", "|---|---|"]
    lines += ["| {} | {} |".format(k, v) for k, v in summary_rows(result)]
    if result.get("busy_loops"):
        lines.append("| busy loops on the host during the load | {} |".format(result["busy_loops"]))
    return "\n".join(lines)


CSV_FIELDS = ("edges", "requests_per_edge", "split", "inflight", "procs", "server_args", "requests", "answered",
              "lost", "mismatched", "duplicated", "out_of_order", "error_replies", "reconnects", "exact_replies",
              "max_abs_diff", "server_requests", "server_cpu_us_per_request", "throughput_per_s", "wall_s",
              "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "latency_max_ms", "rss_idle_mib", "rss_start_mib",
              "rss_peak_mib", "rss_end_mib", "rss_growth_mib", "rss_growth_second_half_mib", "cpu_server_s",
              "cpu_edges_s", "cpu_other_s", "cpu_available_s")


def csv_row(result):
    c, lat, rss = result["config"], result["latency_ms"], result["rss_mib"]
    cpu = result["cpu_s"] or {}
    return {"edges": c["edges"], "requests_per_edge": c["requests"], "split": c["split"], "inflight": c["inflight"],
            "procs": c["procs"], "server_args": " ".join(c["server_args"]), "requests": result["requests"],
            "answered": result["answered"], "lost": result["lost"], "mismatched": result["mismatched"],
            "duplicated": result["duplicated"], "out_of_order": result["out_of_order"],
            "error_replies": result["error_replies"], "reconnects": result["reconnects"],
            "exact_replies": result["exact_replies"], "max_abs_diff": result["max_abs_diff"],
            "server_requests": (result["server_summary"] or {}).get("requests"),
            "server_cpu_us_per_request": result["server_cpu_us_per_request"],
            "throughput_per_s": result["throughput_per_s"], "wall_s": result["wall_s"],
            "latency_p50_ms": lat["p50"], "latency_p90_ms": lat["p90"], "latency_p99_ms": lat["p99"],
            "latency_max_ms": lat["max"], "rss_idle_mib": rss["idle"], "rss_start_mib": rss["start"],
            "rss_peak_mib": rss["peak"], "rss_end_mib": rss["end"], "rss_growth_mib": rss["growth"],
            "rss_growth_second_half_mib": rss["growth_second_half"],
            "cpu_server_s": cpu.get("server_s"), "cpu_edges_s": cpu.get("edges_s"), "cpu_other_s": cpu.get("other_s"),
            "cpu_available_s": cpu.get("available_s")}


def plot(result, path):
    """Left: the latency histogram (log count); right: the server's RSS over time, the load shaded."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    lat = np.array(result["latencies_ms"])
    if len(lat):
        left.hist(lat, bins=np.logspace(np.log10(max(lat.min(), 1e-3)), np.log10(lat.max() * 1.01), 80),
                  color="tab:blue")
        left.set_xscale("log")
        left.set_yscale("log")
        for q, style in (("p50", "-"), ("p99", "--")):
            left.axvline(result["latency_ms"][q], color="black", linestyle=style, linewidth=0.8,
                         label="{} {:.2f} ms".format(q, result["latency_ms"][q]))
        left.legend(fontsize=8)
    c = result["config"]
    left.set_xlabel("request latency (ms, send to checked reply)")
    left.set_ylabel("requests")
    left.set_title("{} edges x {} requests, split {}: {} lost, {} mismatched, {} duplicated".format(
        c["edges"], c["requests"], c["split"], result["lost"], result["mismatched"], result["duplicated"]),
        fontsize=9)
    samples = result["rss_samples"]
    if samples:
        right.plot([t for t, _ in samples], [rss / MIB for _, rss in samples], color="tab:red")
        if result["wall_s"] == result["wall_s"]:
            right.axvspan(0, result["wall_s"], color="tab:gray", alpha=0.2, label="load")
            right.legend(fontsize=8)
    right.set_xlabel("seconds from the start of the load")
    right.set_ylabel("serve-cloud RSS (MiB)")
    right.set_title("server memory (sampled every 0.2 s)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(result, out):
    with open(os.path.join(out, "load.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(out, "load.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerow(csv_row(result))
    plot(result, os.path.join(out, "load.png"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edges", type=int, default=32, help="concurrent edges (one TCP connection each)")
    parser.add_argument("--requests", type=int, default=500, help="requests per edge")
    parser.add_argument("--split", type=int, default=20, help="split point (20: a tail of one small layer)")
    parser.add_argument("--out", default="/tmp/edgesplit-load", help="results, and the bundle store in OUT/store")
    parser.add_argument("--server-arg", action="append", default=[], dest="server_args", metavar="ARG",
                        help="an argument for serve-cloud, repeated: --server-arg=--max-batch --server-arg=8")
    parser.add_argument("--procs", type=int, default=0,
                        help="edge processes (0: one per edge; fewer: a thread per edge in each)")
    parser.add_argument("--inflight", type=int, default=1, help="requests each edge keeps in flight")
    parser.add_argument("--warmup", type=int, default=1, help="checked requests per edge before the load (apart)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds an edge waits for a reply")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-rss-growth-mb", type=float, default=200.0,
                        help="fail if the server's RSS grows more than this during the load")
    parser.add_argument("--busy", type=int, default=0,
                        help="busy loops running during the load (other work on the host; default none)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.edges < 1 or args.requests < 1 or args.inflight < 1:
        parser.error("--edges, --requests and --inflight must be at least 1")
    os.makedirs(args.out, exist_ok=True)
    store = prepare(args.out, args.split)
    from contention import busy_loops
    with busy_loops(args.busy):
        result = run_load(store, args.split, args.edges, args.requests, args.server_args, args.procs, args.inflight,
                          args.seed, args.timeout, args.warmup, show_progress=not args.no_progress)
    result["busy_loops"] = args.busy
    failed = verdict(result, args.max_rss_growth_mb)
    result["failed"] = failed
    print(format_table(result))
    sys.stdout.flush()
    write_outputs(result, args.out)
    _say("wrote load.json, load.csv and load.png in {}".format(args.out))
    for line in result["errors"][:10]:
        _say(line)
    if failed:
        _say("FAILED: " + "; ".join(failed))
        return 1
    _say("passed: no reply lost, mismatched or duplicated; server RSS growth within {:.0f} MiB".format(
        args.max_rss_growth_mb))
    return 0


if __name__ == "__main__":
    sys.exit(main())
