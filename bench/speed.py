#!/usr/bin/env python3
"""The speed benchmark: edgesplit against a seed-style baseline and a raw-socket floor, measured side by side.

One command runs every check of issue #6 on this machine and prints one table of
medians and ratios (Markdown), and writes ``speed.csv``, ``speed.json`` and
``speed.png`` into ``--out``::

    python bench/speed.py --out /tmp/speed            # everything (about 10 minutes on 2 cores)
    python bench/speed.py --only transport,lean       # some checks (other rows kept from --out/speed.json)

Checks (each runs its baseline in the same invocation, same split, same samples):

* transport   loopback, batch 1, splits 3 and 20: median transmission of edgesplit vs
              the seed-style baseline (pickle, length + acknowledgement framing, eager
              PyTorch; bench/seed_style.py) and vs the raw-socket floor for the same
              bytes (bench/raw_floor.py).
* contention  the transport check on a busy CPU (bench/contention.py): ``--busy N``
              busy loops (default one per core), and the edge in a 0.5-core CPU quota
              (root only), the seed-style loop under the same load in the same run;
              and the edge's CPU time per sample against its quiet figure.
* pipelining  edge and cloud each pinned to one core, at a split where their times are
              comparable: throughput with --inflight N vs --inflight 1; and behind a
              50 Mbit/s tbf link at split 3 (root only), throughput vs the link's bound.
* batching    8 concurrent edges at split 10: serve-cloud --max-batch 8 vs no batching.
* compression fp16 / int8 (and + zstd): bytes per sample vs fp32, top-1 agreement with
              fp32 on the same samples.
* lean        peak RSS and time from process start to the first result: run-edge
              (onnxruntime, CPU) vs the seed-style edge (eager PyTorch).

Random weights and synthetic images (no downloads), except that the compression
check takes a trained model where one is given (``--weights``, ``--dataset``; random
weights tie the top two logits of many samples, see bench/proxy_task.py)::

    python bench/train_proxy.py          # on a GPU, 4.5 minutes: weights/proxy-resnet50.pth + held-out set
    python bench/speed.py --weights weights/proxy-resnet50.pth --dataset npz:weights/proxy-heldout.npz

Timings from one run of this 2-core VM vary by about 10-20%; ratios within one run
are what to compare.
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CLI = os.path.join(REPO, "cli.py")
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

from runtime import launch  # noqa: E402

CHECKS = ("transport", "contention", "pipelining", "batching", "compression", "lean")
ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


def _say(message):
    sys.stderr.write("speed: {}\n".format(message))
    sys.stderr.flush()


# ---------------------------------------------------------------- processes

class Server(launch.Started):
    """A server process (ours or the seed-style one) on a free loopback port (runtime.launch)."""

    def __init__(self, argv, ready, cpu=None):
        prefix = ["taskset", "-c", str(cpu)] if cpu is not None else []
        launch.Started.__init__(self, prefix + argv, ready, env=ENV, cwd=REPO)

    def stop(self):
        launch.Started.stop(self)
        return self.log_text()


def ours_server(store, cpu=None, *extra):
    return Server([sys.executable, CLI, "serve-cloud", "--port", "0", "--artifacts", store, "--threads", "1"]
                  + [str(e) for e in extra], "listening on", cpu)


def seed_server(cpu=None):
    return Server([sys.executable, os.path.join(HERE, "seed_style.py"), "serve", "--port", "0", "--threads", "1"],
                  "listening on", cpu)


def run_edge(address, work, split, data, limit, *extra, cpu=None, name="r", wrap=None):
    """cli.py run-edge as a process (``wrap(argv)``, e.g. a CPU quota, where given); returns its JSON report."""
    report = os.path.join(work, "{}.json".format(name))
    prefix = ["taskset", "-c", str(cpu)] if cpu is not None else []
    argv = prefix + [sys.executable, CLI, "run-edge", "--cloud", address, "--cache", os.path.join(work, "edge"),
                     "--split", str(split), "--dataset", "npz:" + data, "--limit", str(limit), "--threads", "1",
                     "--report", report] + [str(e) for e in extra]
    argv = wrap(argv) if wrap else argv
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, env=ENV,
                          cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError("run-edge failed: " + proc.stderr)
    with open(report) as f:
        return json.load(f)


# ---------------------------------------------------------------- setup

def export_splits(store, splits, weights=None):
    """ONNX bundles of the seed's ResNet-50 for ``splits`` in ``store`` (those missing), from ``weights`` or random."""
    for split in splits:
        if not os.path.isdir(os.path.join(store, "resnet50-s{}".format(split))):
            _say("exporting split {} ({})".format(split, weights or "random weights"))
            subprocess.run([sys.executable, CLI, "export", "--split", str(split), "--out", store, "--formats", "onnx"]
                           + (["--weights", weights] if weights else ["--random-init"]),
                           check=True, stdout=subprocess.DEVNULL, cwd=REPO)
    return store


def prepare(work, splits):
    """Random-weight bundles for ``splits`` and 1000 synthetic images (uint8 npz + the preprocessed floats)."""
    store = export_splits(os.path.join(work, "store"), splits)
    from runtime.bundle.manifest import load_manifest
    from runtime.edge.data import preprocess_batch
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, size=(1000, 32, 32, 3)).astype(np.uint8)
    data = os.path.join(work, "images.npz")
    np.savez(data, x=images, y=np.zeros(len(images), dtype=np.int64))
    pre = load_manifest(os.path.join(store, "resnet50-s{}".format(splits[0])))["input"]["preprocess"]
    return store, data, preprocess_batch(images, pre)


def row(check, metric, ours, baseline, target, met, unit="ms", note=""):
    ratio = ours / baseline if baseline else float("nan")
    return {"check": check, "metric": metric, "ours": ours, "baseline": baseline, "ratio": ratio, "unit": unit,
            "target": target, "met": met, "note": note}


# ---------------------------------------------------------------- checks

def check_transport(work, store, data, samples, limit):
    import raw_floor
    import seed_style
    rows = []
    for split in (3, 20):
        srv = ours_server(store)
        try:
            r = run_edge(srv.address, work, split, data, limit, name="transport-{}".format(split))
        finally:
            srv.stop()
        ours = r["transmission_ms"]["p50"]
        up, down = int(r["bytes_sent_per_sample"]), int(r["bytes_received_per_sample"])
        srv = ours_server(store)
        try:
            sleeping = run_edge(srv.address, work, split, data, limit, "--no-busy-poll",
                                name="transport-sleep-{}".format(split))["transmission_ms"]["p50"]
        finally:
            srv.stop()
        seed = seed_server()
        try:
            s = seed_style.run_edge(seed.address, split, samples[:limit], threads=1)
        finally:
            seed.stop()
        seed_ms = float(np.median(s["transmission_ms"]))
        # the floor in the run's cadence: before each request the edge's real head runs, and the server keeps
        # its CPU busy for the tail's median time before answering (subtracted); a tight loop is faster still
        from runtime.backends import load_part
        from runtime.bundle.manifest import load_manifest
        head = load_part(load_manifest(os.path.join(store, "resnet50-s{}".format(split))), "head", threads=1)
        x = samples[:1]
        floor_srv = raw_floor.start_server(process=True)
        try:
            tight = float(np.median(raw_floor.measure(floor_srv.address, up, down, n=max(limit, 200))))
            floor = float(np.median(raw_floor.measure(floor_srv.address, up, down, n=limit, warmup=5,
                                                      between=lambda: head.run(x), busy_ms=r["cloud_ms"]["p50"])))
        finally:
            floor_srv.stop()
        rows.append(row("transport", "split {} transmission ({} B up) vs seed-style".format(split, up), ours,
                        seed_ms, "<= 0.25x", ours <= 0.25 * seed_ms))
        rows.append(row("transport", "split {} transmission vs raw-socket floor (same cadence)".format(split), ours,
                        floor, "<= floor + 0.3 ms", ours <= floor + 0.3,
                        note="+{:.3f} ms; floor in a tight loop {:.3f} ms".format(ours - floor, tight)))
        rows.append(row("transport", "split {} transmission with --no-busy-poll vs the same floor".format(split),
                        sleeping, floor, "(for reference)", True, note="+{:.3f} ms".format(sleeping - floor)))
    return rows


def check_pipelining(work, store, data, limit, depth):
    """Edge on core 1, cloud on core 0, one thread each; a split where head and tail take about as long."""
    rows = []
    split = 13
    srv = ours_server(store, 0)
    try:
        one = run_edge(srv.address, work, split, data, limit, "--inflight", 1, cpu=1, name="pipe-1")
        many = run_edge(srv.address, work, split, data, limit, "--inflight", depth, cpu=1, name="pipe-n")
    finally:
        srv.stop()
    a, b = one["throughput_samples_per_s"], many["throughput_samples_per_s"]
    rows.append(row("pipelining", "split {} samples/s, --inflight {} vs 1 (edge {:.1f} ms, cloud {:.1f} ms)".format(
        split, depth, one["edge_ms"]["p50"], one["cloud_ms"]["p50"]), b, a, ">= 1.7x", b >= 1.7 * a, unit="1/s"))
    try:
        import emulate
    except ImportError:
        return rows
    ok, why = emulate.available()
    if not ok:
        _say("tbf pipelining check skipped: " + why)
        return rows
    rate = 50
    with emulate.EmulatedLink(rate, edge_cpu=16, tag="speed") as link:
        server, address = emulate.start_server(link, store, "--threads", "1")
        results = {}
        for n in (1, depth):
            report = os.path.join(work, "tbf-{}.json".format(n))
            proc = link.edge([sys.executable, CLI, "run-edge", "--cloud", address, "--cache", os.path.join(work, "edge"),
                              "--split", "3", "--dataset", "npz:" + data, "--limit", str(limit), "--threads", "1",
                              "--inflight", str(n), "--report", report], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, universal_newlines=True)
            _, err = proc.communicate(timeout=600)
            if proc.returncode != 0:
                raise RuntimeError("run-edge behind tbf failed: " + err)
            with open(report) as f:
                results[n] = json.load(f)
        server.terminate()
        server.wait(60)
    per_sample = results[depth]["bytes_sent_per_sample"] + results[depth]["bytes_received_per_sample"]
    bound = rate * 1e6 / 8 / results[depth]["bytes_sent_per_sample"]  # the uplink carries the activations
    got = results[depth]["throughput_samples_per_s"]
    rows.append(row("pipelining", "split 3 behind 50 Mbit/s tbf: samples/s vs the link's bound ({:.0f} B/sample)".format(
        per_sample), got, bound, ">= 0.85x", got >= 0.85 * bound, unit="1/s",
        note="--inflight 1: {:.1f}/s".format(results[1]["throughput_samples_per_s"])))
    return rows


def check_batching(work, store, data, limit, edges=8, split=10):
    def run_all(server):
        reports = [None] * edges
        errors = []

        def one(i):
            try:
                reports[i] = run_edge(server.address, work, split, data, limit, "--inflight", 2, "--warmup", 1,
                                      "--shuffle", "--seed", i, name="batch-{}".format(i))
            except Exception as exc:
                errors.append(exc)
        threads = [threading.Thread(target=one, args=(i,)) for i in range(edges)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        # the edges' measured loops overlap (each starts after its own process start-up): their rates add up
        return sum(r["throughput_samples_per_s"] for r in reports), reports

    # each server with its best thread setting on this machine: without batching, the connections' tail runs are
    # parallel (one thread each); with it, one batch runs at a time and gets every core
    rows = []
    srv = Server([sys.executable, CLI, "serve-cloud", "--port", "0", "--artifacts", store, "--threads", "1"],
                 "listening on")
    try:
        plain, _ = run_all(srv)
    finally:
        srv.stop()
    srv = Server([sys.executable, CLI, "serve-cloud", "--port", "0", "--artifacts", store, "--threads",
                  str(os.cpu_count() or 1), "--max-batch", str(edges), "--max-delay-ms", "5"], "listening on")
    try:
        batched, reports = run_all(srv)
    finally:
        log = srv.stop()
    queue = float(np.median([r["queue_ms"]["p50"] for r in reports]))
    compute = float(np.median([r["cloud_ms"]["p50"] for r in reports]))
    rows.append(row("batching", "{} edges at split {}: samples/s, --max-batch {} vs none".format(edges, split, edges),
                    batched, plain, "none (the edges' heads take the same 2 cores)", None, unit="1/s",
                    note="cloud queue p50 {:.2f} ms, compute p50 {:.2f} ms; {}".format(
                        queue, compute, [l.strip().split("serve-cloud INFO ")[-1] for l in log.splitlines()
                                         if "batcher" in l][:1])))
    return rows


def check_batching_capacity(work, store, streams=8, split=10, seconds=10.0, rounds=3):
    """The cloud alone: serve-cloud with every core, 8 client streams (processes sending ready split-10
    activations, as 8 edges would) in a closed loop, so the server's compute is the bottleneck, as on a
    real cloud host.  The baseline is the better of one thread per connection and every core per run.
    Each configuration runs ``rounds`` times, alternating, and the medians are compared (one run on this
    VM varies by +-15%).  Once with onnxruntime, once with TorchScript (bundles exported for it into
    work/store-ts).  Only TorchScript's row has a target: onnxruntime's CPU kernels run one sample nearly
    as efficiently as eight, so its row shows how little batching gives there."""
    import gpu_check
    cores = os.cpu_count() or 1
    ts_store = os.path.join(work, "store-ts")
    gpu_check.export(ts_store, [split])
    rows = []
    for backend, where in (("onnx", store), ("torchscript", ts_store)):
        served = ["--backend", backend]
        configs = {"threads {}".format(t): served + ["--threads", t] for t in sorted({1, cores})}
        configs["batched"] = served + ["--threads", cores, "--max-batch", streams, "--max-delay-ms", 5]
        runs = {name: [] for name in configs}
        for _ in range(rounds):
            for name, args in configs.items():
                runs[name].append(gpu_check.serve_throughput(where, streams, seconds, split, args))
        medians = {name: float(np.median(v)) for name, v in runs.items()}
        best = max((n for n in medians if n != "batched"), key=medians.get)
        batched = medians["batched"]
        timed = backend == "torchscript"
        rows.append(row("batching", "serve-cloud --backend {}, {} streams at split {}: samples/s, --max-batch {} vs "
                        "none (median of {})".format(backend, streams, split, streams, rounds), batched,
                        medians[best], "> 1x (CPU; GPU: >= 8x)" if timed else "(for reference)",
                        batched > medians[best] if timed else None, unit="1/s",
                        note="; ".join("{}: {}".format(n, " ".join("{:.1f}".format(x) for x in v))
                                       for n, v in runs.items())))
    return rows


def trained_store(work, weights, splits=(3, 20)):
    """Bundles for ``splits`` exported from ``weights`` (one store per weights file, reused across runs)."""
    from runtime.bundle.manifest import sha256_file
    return export_splits(os.path.join(work, "store-" + sha256_file(weights)[:12]), splits, weights)


def check_compression(work, store, data, limit, label="random weights", targets=True):
    """Bytes per sample and top-1 agreement with fp32 for fp16, int8 and int8+zstd at splits 3 and 20.

    ``label`` names the weights in each agreement row; with ``targets`` False the
    agreement rows carry no target (the random-weight rows beside a trained model's).
    """
    from runtime.bundle.manifest import load_manifest
    rows = []
    srv = ours_server(store)
    try:
        for split in (3, 20):
            base = run_edge(srv.address, work, split, data, limit, name="fp32-{}".format(split))
            numel = int(np.prod(load_manifest(os.path.join(store, "resnet50-s{}".format(split)))["boundary"]["shape"][1:]))
            for scheme, codec, target in (("fp16", "none", 0.5), ("int8", "none", 0.25), ("int8", "zstd", 0.25)):
                r = run_edge(srv.address, work, split, data, limit, "--compress", scheme, "--codec", codec,
                             name="{}-{}-{}".format(scheme, codec, split))
                agree = float(np.mean(np.array(r["predictions"]) == np.array(base["predictions"])))
                need = 0.999 if scheme == "fp16" else 0.99
                size = r["bytes_sent_per_sample"]
                if targets and codec == "none":  # the tensor itself is exactly 2 or 1 bytes a value; + metadata
                    payload = numel * (2 if scheme == "fp16" else 1)
                    rows.append(row("compression", "split {} {}: tensor bytes/sample vs fp32".format(split, scheme),
                                    payload, numel * 4, "<= {}x".format(target), payload <= target * numel * 4,
                                    unit="B", note="on the wire with header and metadata: {:.0f} B vs {:.0f} B, "
                                                   "{:.3f}x".format(size, base["bytes_sent_per_sample"],
                                                                    size / base["bytes_sent_per_sample"])))
                elif targets:
                    rows.append(row("compression", "split {} {}+{}: wire bytes/sample vs fp32".format(
                        split, scheme, codec), size, base["bytes_sent_per_sample"], "<= {}x".format(target),
                        size <= target * base["bytes_sent_per_sample"], unit="B"))
                note = "transmission p50 {:.3f} ms (fp32 {:.3f})".format(r["transmission_ms"]["p50"],
                                                                        base["transmission_ms"]["p50"])
                if not targets:
                    note = "no target: random weights make near-ties (see docs/BENCHMARKS.md, Compression); " + note
                rows.append(row("compression", "split {} {}+{}: top-1 agreement with fp32, {} ({} samples)".format(
                    split, scheme, codec, label, limit), agree, 1.0, ">= {}".format(need) if targets else "-",
                    agree >= need if targets else None, unit="", note=note))
    finally:
        srv.stop()
    return rows


def _peak(argv, marker):
    """Run ``argv``; return (peak RSS MiB of the process tree, seconds from start to ``marker`` on any output)."""
    import psutil
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, env=ENV,
                            cwd=REPO)
    first = [None]

    def watch():
        for line in proc.stdout:
            if first[0] is None and marker in line:
                first[0] = time.perf_counter() - started
    reader = threading.Thread(target=watch, daemon=True)
    reader.start()
    peak = 0
    ps = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
        except psutil.Error:
            break
        time.sleep(0.005)
    reader.join(10)
    if proc.returncode != 0:
        raise RuntimeError("{} exited {}".format(argv[:3], proc.returncode))
    return peak / 1048576.0, first[0]


def check_lean(work, store, data, limit=20):
    rows = []
    split = 20
    srv = ours_server(store)
    seed = seed_server()
    try:
        run_edge(srv.address, work, split, data, 1, name="lean-warm")  # the head is cached, as on a deployed edge
        ours_rss, ours_first = _peak([sys.executable, CLI, "run-edge", "--cloud", srv.address, "--cache",
                                      os.path.join(work, "edge"), "--split", str(split), "--dataset", "npz:" + data,
                                      "--limit", str(limit), "--threads", "1", "--warmup", "0", "--verbose"],
                                     "Prediction:")
        seed_rss, seed_first = _peak([sys.executable, os.path.join(HERE, "seed_style.py"), "edge", "--cloud",
                                      seed.address, "--split", str(split), "--limit", str(limit), "--threads", "1"],
                                     "first result")
    finally:
        srv.stop()
        seed.stop()
    rows.append(row("lean", "run-edge peak RSS (MiB) vs seed-style edge", ours_rss, seed_rss, "<= 0.4x",
                    ours_rss <= 0.4 * seed_rss, unit="MiB"))
    rows.append(row("lean", "process start to first result (s) vs seed-style edge", ours_first, seed_first,
                    "<= 0.5x", ours_first <= 0.5 * seed_first, unit="s"))
    return rows


# ---------------------------------------------------------------- output

def format_table(rows):
    lines = ["| check | metric | edgesplit | baseline | ratio | target | met | note |",
             "|---|---|---:|---:|---:|---|:---:|---|"]
    for r in rows:
        lines.append("| {} | {} | {:.3f} {} | {:.3f} {} | {:.3f} | {} | {} | {} |".format(
            r["check"], r["metric"], r["ours"], r["unit"], r["baseline"], r["unit"], r["ratio"], r["target"],
            "-" if r["met"] is None else "yes" if r["met"] else "**no**", r["note"]))
    return "\n".join(lines)


def plot(rows, path):
    """Left: transmission per split, seed-style vs edgesplit vs the raw-socket floor; right: every check's ratio."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 0.42 * len(rows) + 2),
                                      gridspec_kw={"width_ratios": [1, 2.2]})
    transport = {}
    for r in rows:
        if r["check"] == "transport" and "seed-style" in r["metric"]:
            transport.setdefault(r["metric"].split()[1], {}).update(seed=r["baseline"], ours=r["ours"])
        elif r["check"] == "transport" and "same cadence" in r["metric"]:
            transport.setdefault(r["metric"].split()[1], {}).update(floor=r["baseline"])
    splits = sorted(transport, key=int)
    for i, (key, label) in enumerate((("seed", "seed-style (pickle, ack)"), ("ours", "edgesplit"),
                                      ("floor", "raw socket, same cadence"))):
        left.bar([j + (i - 1) * 0.27 for j in range(len(splits))], [transport[s].get(key, 0) for s in splits],
                 width=0.27, label=label)
    left.set_xticks(range(len(splits)))
    left.set_xticklabels(["split {}".format(s) for s in splits])
    left.set_ylabel("median transmission per request (ms), loopback")
    left.legend(fontsize=8)
    left.set_title("transport")
    labels = ["{}: {}".format(r["check"], r["metric"]) for r in rows]
    right.barh(range(len(rows)), [r["ratio"] for r in rows],
               color=["tab:gray" if r["met"] is None else "tab:green" if r["met"] else "tab:red" for r in rows])
    right.set_yticks(range(len(rows)))
    right.set_yticklabels(labels, fontsize=7)
    right.invert_yaxis()
    right.axvline(1.0, color="black", linewidth=0.8)
    right.set_xscale("log")
    right.set_xlabel("edgesplit / baseline (log; green: target met; see the table for each target)")
    right.set_title("every check")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "edgesplit-speed"))
    parser.add_argument("--only", default=",".join(CHECKS), help="comma-separated: " + ", ".join(CHECKS))
    parser.add_argument("--limit", type=int, default=200, help="samples per timed run")
    parser.add_argument("--inflight", type=int, default=2, help="pipeline depth for the pipelining check")
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 2,
                        help="busy loops for the contention check (default: one per core)")
    parser.add_argument("--weights", help="the compression check's model: a trained state_dict for the seed's "
                        "ResNet-50 (bench/train_proxy.py writes one); its rows carry the targets, and the random-weight "
                        "rows are kept beside them without")
    parser.add_argument("--dataset", help="npz:PATH, the compression check's 1000 labelled images with --weights "
                        "(default: the synthetic noise images)")
    args = parser.parse_args()
    if args.weights and not os.path.isfile(args.weights):
        sys.exit("speed: --weights {} not found; bench/train_proxy.py writes weights/proxy-resnet50.pth".format(
            args.weights))
    if args.dataset:
        if not args.dataset.startswith("npz:") or not os.path.isfile(args.dataset[4:]):
            sys.exit("speed: --dataset must be npz:PATH of an existing file (bench/train_proxy.py writes "
                     "weights/proxy-heldout.npz), not {!r}".format(args.dataset))
        args.dataset = os.path.abspath(args.dataset[4:])
    only = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = set(only) - set(CHECKS)
    if unknown:
        sys.exit("speed: unknown check(s) {}; choose from {}".format(", ".join(sorted(unknown)), ", ".join(CHECKS)))
    os.makedirs(args.out, exist_ok=True)
    work = os.path.join(args.out, "work")
    os.makedirs(work, exist_ok=True)
    store, data, samples = prepare(work, [3, 10, 13, 20])
    from rich.progress import Progress
    rows = []
    with Progress(transient=True) as progress:
        task = progress.add_task("checks", total=len(only))
        for name in only:
            progress.update(task, description=name)
            if name == "transport":
                rows += check_transport(work, store, data, samples, args.limit)
            elif name == "contention":
                from contention import check_contention
                rows += check_contention(work, store, data, min(args.limit, 64), args.busy)
            elif name == "pipelining":
                rows += check_pipelining(work, store, data, args.limit, args.inflight)
            elif name == "batching":
                rows += check_batching(work, store, data, max(args.limit // 4, 20), split=10)
                rows += check_batching(work, store, data, max(args.limit // 4, 20), split=3)
                rows += check_batching_capacity(work, store)
            elif name == "compression" and args.weights:
                rows += check_compression(work, trained_store(work, args.weights), args.dataset or data, 1000,
                                          label="weights {}".format(os.path.basename(args.weights)))
                rows += check_compression(work, store, data, 1000, targets=False)
            elif name == "compression":
                rows += check_compression(work, store, data, 1000)
            elif name == "lean":
                rows += check_lean(work, store, data)
            progress.advance(task)
            _say("{} done".format(name))
    previous = os.path.join(args.out, "speed.json")
    if set(only) != set(CHECKS) and os.path.isfile(previous):  # a partial rerun replaces only its checks' rows
        with open(previous) as f:
            kept = [r for r in json.load(f) if r["check"] not in only]
        rows = sorted(kept + rows, key=lambda r: CHECKS.index(r["check"]))
    print(format_table(rows))
    with open(os.path.join(args.out, "speed.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(args.out, "speed.json"), "w") as f:
        json.dump(rows, f, indent=1)
    plot(rows, os.path.join(args.out, "speed.png"))
    _say("wrote speed.csv, speed.json and speed.png in {}".format(args.out))


if __name__ == "__main__":
    main()
