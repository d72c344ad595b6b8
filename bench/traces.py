#!/usr/bin/env python3
"""Split inference on real networks: every mode against the same replayed trace, and two oracles.

For each ``--trace`` (Mahimahi or ``seconds,mbit`` CSV; bench/tracelink.py), from the
same start of the trace and on the same samples, this runs

* ``static:K`` for every K in ``--splits`` (``run-edge --split K``),
* ``auto``: ``run-edge --split auto``, planned once at the start,
* ``adaptive``: ``run-edge --split auto --adaptive``,

each a real ``run-edge`` process (ONNX, one thread, in a CPU quota of ``--edge-cpu``
cores where cgroups allow: a Jetson-speed head) against one ``serve-cloud`` (a
thread per core by default) through a fresh TraceLink: the uplink replays the trace, the downlink is a
fixed 50 Mbit/s, each direction delays by half of ``--rtt-ms``.  Samples are released
at a camera's cadence (``run-edge --interval-ms``, default 100 ms: 10 frames a second)
from one wall-clock instant that is also the trace's time zero (``--start-at``); before
it the link runs at the trace's opening rate, so a mode's connection, planning and
warm-up see the start of the trace.  A sample's latency is from its release to its
reply (``from_release_ms``): a link too slow for the cadence shows as a queue.  The
edge's cache is filled beforehand, unshaped (every head it may run, and the segments
adaptive mode chains heads from): on a real deployment the heads are installed before
the network matters.

Every run must answer every sample once, correctly: its predictions are compared
with the unsplit model's (the split-22 bundle run whole on this machine) on the same
samples.  Two oracles come from the trace and the compute times the static runs
measured (median edge and cloud ms per split, bytes per sample each way), through a
simulation of the same link (``simulate``: one request at a time, each upload
starting on an empty queue and leaving at the trace's delivery opportunities):

* ``oracle_static``: the best split of ``--splits`` in hindsight, all run long;
* ``oracle_interval``: per second of the trace, the split best for that second's
  samples (given the queue the seconds before left), switching for free.

The simulation is checked against the measured static runs (``simulated_ms`` beside
``mean_ms``); for ``auto`` and ``adaptive`` ``simulated_ms`` is their own per-sample
choice of split with the static runs' compute times, which tells the quality of the
decisions apart from this machine's run-to-run variation in compute.  Output in ``--out``: ``results.json`` (``{trace: {mode: {mean_ms,
p50_ms, p95_ms, deadline_hit, samples, lost, switches}}}``, ``deadline_hit`` the share
of samples answered within ``--deadline-ms``), the run reports, a Markdown table on
stdout and a PNG per trace (the trace's rate, adaptive's split over time, latency of
adaptive and of the best static split per sample)::

    python bench/traces.py --trace ATT-LTE-driving-2016.up --edge-cpu 0.5 --seconds 60 --out /tmp/traces

Exits 1 if a run lost or mis-answered a sample; 2 on bad input (a trace, a flag).
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CLI = os.path.join(REPO, "cli.py")
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

import speed  # noqa: E402
import tracelink  # noqa: E402

ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
ALL_SPLITS = range(23)  # the seed's ResNet-50 points, every one adaptive mode may choose
DOWN_MBIT = 50.0
CACHE_KEEP = 64  # every split's head stays in the edge's cache
FRAME_BYTES = 64  # header and metadata of a frame, beyond its tensor (simulation only)


def label(trace):
    """A trace's name without its extension (``ATT-LTE-driving-2016``)."""
    return os.path.splitext(trace.name)[0]


def _say(message):
    sys.stderr.write("traces: {}\n".format(message))
    sys.stderr.flush()


# ---------------------------------------------------------------- the simulated link (pure)

def simulate(up, down, choose, costs, n, interval_ms, delay_ms):
    """Latencies (ms from release) of ``n`` samples released every ``interval_ms`` from trace time 0.

    ``choose(i, t_ms)`` gives sample i's split; ``costs[k]`` is (edge ms, cloud ms, bytes
    up, bytes down) of split k.  One request at a time, as run-edge --inflight 1: sample i
    starts when released or when sample i-1 is answered, whichever is later; its upload
    starts after the head and leaves at ``up``'s opportunities (``Trace.finish_ms``),
    arrives ``delay_ms`` later, the tail runs, the reply leaves at ``down``'s and arrives
    ``delay_ms`` later.
    """
    latencies, free = [], 0.0
    for i in range(n):
        release = i * interval_ms
        start = max(release, free)
        edge_ms, cloud_ms, b_up, b_down = costs[choose(i, start)]
        sent = up.finish_ms(start + edge_ms, b_up)
        answered = down.finish_ms(sent + delay_ms + cloud_ms, b_down) + delay_ms
        free = answered
        latencies.append(answered - release)
    return latencies


def oracle_static(up, down, costs, n, interval_ms, delay_ms):
    """(split, latencies) of the split with the lowest mean latency over the whole run."""
    best = None
    for k in sorted(costs):
        lat = simulate(up, down, lambda i, t, k=k: k, costs, n, interval_ms, delay_ms)
        if best is None or np.mean(lat) < np.mean(best[1]):
            best = (k, lat)
    return best


def oracle_interval(up, down, costs, n, interval_ms, delay_ms, step_ms=1000.0):
    """(splits per sample, latencies): per ``step_ms`` of the trace, the split best for that step's samples.

    Greedy in time: each step is decided given the queue the steps before it left (the
    first sample of a step may still wait for the last of the one before)."""
    per_step = int(round(step_ms / interval_ms)) or 1
    chosen = []
    for first in range(0, n, per_step):
        count = min(per_step, n - first)
        best = None
        for k in sorted(costs):
            plan = chosen + [k] * count
            lat = simulate(up, down, lambda i, t: plan[i], costs, first + count, interval_ms, delay_ms)
            score = np.mean(lat[first:])
            if best is None or score < best[0]:
                best = (score, k)
        chosen += [best[1]] * count
    return chosen, simulate(up, down, lambda i, t: chosen[i], costs, n, interval_ms, delay_ms)


def summarize(latencies, deadline_ms, samples=None, lost=0, switches=0):
    lat = np.asarray(latencies, dtype=np.float64)
    return {"mean_ms": float(lat.mean()), "p50_ms": float(np.percentile(lat, 50)),
            "p95_ms": float(np.percentile(lat, 95)), "deadline_hit": float(np.mean(lat <= deadline_ms)),
            "samples": int(lat.size if samples is None else samples), "lost": int(lost), "switches": int(switches)}


# ---------------------------------------------------------------- processes

def start_server(store, threads=0):
    """serve-cloud on a free loopback port (bench/speed.py's Server), with ``target`` for TraceLink."""
    server = speed.Server([sys.executable, CLI, "serve-cloud", "--port", "0", "--artifacts", store,
                           "--threads", str(threads)], "listening on")
    host, port = server.address.rsplit(":", 1)
    server.target = (host, int(port))
    return server


def edge_argv(address, cache, data, limit, mode, report, extra=()):
    split = mode.split(":", 1)[1] if mode.startswith("static:") else "auto"
    argv = [sys.executable, CLI, "run-edge", "--cloud", address, "--cache", cache, "--split", split,
            "--dataset", "npz:" + data, "--limit", str(limit), "--threads", "1", "--report", report,
            "--cache-keep", str(CACHE_KEEP)]
    if mode == "adaptive":
        argv.append("--adaptive")
    return argv + list(extra)


def run_edge(argv, quota, timeout_s):
    """One run-edge process (in the quota where there is one); returns (rc, stderr)."""
    argv = quota.wrap(argv) if quota is not None else argv
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, universal_newlines=True,
                            env=ENV, cwd=REPO)
    try:
        _, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        return -9, (err or "") + "\n(killed after {:.0f} s)".format(timeout_s)
    except BaseException:  # Ctrl-C: no edge left behind
        proc.kill()
        proc.wait()
        raise
    return proc.returncode, err


# ---------------------------------------------------------------- setup

def needed_splits(modes):
    """The bundles the modes may use: every split for auto and adaptive, else the static ones."""
    if "auto" in modes or "adaptive" in modes:
        return list(ALL_SPLITS)
    return [int(m.split(":")[1]) for m in modes]


def prepare(out, weights, n, modes):
    """The modes' bundles (ONNX) in OUT/store, the segments where planning needs them, ``n`` images, and the
    unsplit model's predictions for them (the labels every run must reproduce)."""
    from exporter.bundle import export_bundle
    from exporter.options import ExportOptions
    from exporter.segments import export_segments
    store = os.path.join(out, "store")
    os.makedirs(store, exist_ok=True)
    have = set(os.listdir(store))
    for k in sorted(set(needed_splits(modes)) | {22}):
        if "resnet50-s{}".format(k) not in have:
            _say("exporting split {}".format(k))
            export_bundle("resnet50", str(k), ExportOptions(weights=weights, out_dir=store, formats=("onnx",)))
    if needed_splits(modes) == list(ALL_SPLITS) and not any(d.startswith("resnet50-segments") for d in have):
        _say("exporting the segments")
        export_segments("resnet50", ExportOptions(weights=weights, out_dir=store, formats=("onnx",)))
    data = os.path.join(out, "samples-{}.npz".format(n))
    if not os.path.exists(data):
        from runtime.backends import load_part
        from runtime.bundle.manifest import load_manifest
        from runtime.edge.data import preprocess_batch
        full = load_manifest(os.path.join(store, "resnet50-s22"))
        runner = load_part(full, "head", "onnx", "cpu", 1)
        images = np.random.RandomState(7).randint(0, 256, size=(n, 32, 32, 3)).astype(np.uint8)
        x = preprocess_batch(images, full["input"].get("preprocess") or {})
        labels = np.concatenate([runner.run(x[i:i + 50]).argmax(axis=1) for i in range(0, n, 50)])
        np.savez(data + ".tmp.npz", x=images, y=labels.astype(np.int64))
        os.replace(data + ".tmp.npz", data)
    return store, data


def default_weights(out):
    """BN-calibrated weights in the seed's layout (the tests' own model), so predictions differ per sample."""
    path = os.path.join(out, "weights-calibrated.pth")
    if not os.path.exists(path):
        import torch
        sys.path.insert(0, os.path.join(REPO, "tests"))
        from seed_reference import make_state_dict
        torch.save(make_state_dict(seed=1234), path + ".tmp")
        os.replace(path + ".tmp", path)
    return path


def fill_cache(server, cache, data, modes, quota):
    """Every head the runs use, and the segments and profile, into the edge's cache, over an unshaped link."""
    splits = needed_splits(modes)
    for number, k in enumerate(splits, 1):
        _say("filling the edge's cache: split {} ({}/{})".format(k, number, len(splits)))
        rc, err = run_edge(edge_argv(server.address, cache, data, 1, "static:{}".format(k), os.devnull,
                                     ["--warmup", "0"]), quota, 1800)
        if rc != 0:
            raise RuntimeError("filling the cache with split {} failed: {}".format(k, err.strip()[-400:]))
    if splits != list(ALL_SPLITS):
        return
    _say("profiling the edge for the planner")
    rc, err = run_edge([sys.executable, CLI, "plan", "--cloud", server.address, "--cache", cache, "--threads", "1",
                        "--json"], quota, 1800)
    if rc != 0:
        raise RuntimeError("profiling the edge failed: " + err.strip()[-400:])


# ---------------------------------------------------------------- one trace

def cannot_carry(trace, mode, store, interval_ms, seconds):
    """Why a static split cannot be run at this cadence over this trace's first ``seconds``, or None.

    A split whose activation needs more of the link per sample, at the window's mean rate, than the time
    between samples builds a queue that only grows: its run would take many times the trace's length (split
    10's 512 KiB take 2 s a sample at 2 Mbit/s) and end with every sample late.  It is reported, not run."""
    if not mode.startswith("static:"):
        return None
    from runtime.bundle.manifest import load_manifest
    bundle = os.path.join(store, "resnet50-s{}".format(mode.split(":")[1]))
    if not os.path.isdir(bundle):  # not exported: a mode only reused, whose report says what it did
        return None
    nbytes = load_manifest(bundle)["boundary"]["bytes_per_sample"]
    mean = trace.mean_mbit(0.0, seconds)
    link_ms = nbytes * 8.0 / (mean * 1000.0) if mean > 0 else float("inf")
    if link_ms <= interval_ms:
        return None
    return "its {:,} bytes a sample need {:.0f} ms of the link at the mean {:.2f} Mbit/s of the {:g} s run, more " \
           "than the {:g} ms between samples".format(nbytes, link_ms, mean, seconds, interval_ms)


def run_params(trace, args, n):
    """What a run's figures depend on: a report is reused (--reuse) only under the same."""
    return {"trace": trace.name, "trace_period_ms": trace.period_ms, "opportunities": len(trace.times),
            "samples": n, "interval_ms": args.interval_ms, "rtt_ms": args.rtt_ms, "edge_cpu": args.edge_cpu,
            "cloud_threads": args.cloud_threads, "weights": args.weights}


def reused(report, params):
    """The start time recorded beside ``report`` when it was made under ``params``, else None."""
    try:
        with open(report + ".params") as f:
            side = json.load(f)
        return side["start_at"] if side["params"] == params and os.path.exists(report) else None
    except (OSError, ValueError, KeyError):
        return None


def run_trace(trace, server, cache, data, labels, modes, args, quota, work, store, reuse=()):
    """Every mode over one trace (those in ``reuse`` from an earlier run's reports, where they match);
    returns ({mode: summary}, {mode: report})."""
    n = len(labels)
    params = run_params(trace, args, n)
    results, reports = {}, {}
    for number, mode in enumerate(modes, 1):
        report = os.path.join(work, "{}.json".format(mode.replace(":", "-")))
        unfit = cannot_carry(trace, mode, store, args.interval_ms, args.seconds)
        if unfit:
            results[mode] = {"skipped": unfit, "samples": 0, "lost": 0}
            _say("{} {}: not run: {}".format(label(trace), mode, unfit))
            continue
        start_at = reused(report, params) if mode in reuse else None
        if mode in reuse and start_at is None:
            continue  # not asked for, and no report of it under these settings: left out
        if start_at is not None:
            _say("{} {}: reusing the earlier run's report".format(label(trace), mode))
            rc, err = 0, ""
        else:
            rc, err, start_at = run_mode(trace, server, cache, data, n, mode, report, args, quota, number,
                                         len(modes))
            if rc == 0:
                with open(report + ".params", "w") as f:
                    json.dump({"params": params, "start_at": start_at}, f)
        if rc != 0 or not os.path.exists(report):
            results[mode] = {"error": err.strip().splitlines()[-1] if err.strip() else "exit {}".format(rc),
                             "samples": 0, "lost": n}
            _say("{} {}: FAILED: {}".format(label(trace), mode, results[mode]["error"]))
            continue
        with open(report) as f:
            r = json.load(f)
        reports[mode] = r
        wrong = sum(1 for a, b in zip(r["predictions"], labels) if a != b)
        late = r["started_unix"] - start_at
        if late > 0.5:
            _say("{} {}: started {:.1f} s after the trace's zero (raise --lead-s)".format(label(trace), mode, late))
        results[mode] = summarize(r["timeline"]["from_release_ms"], args.deadline_ms, r["n"],
                                  lost=n - r["n"], switches=len(r["switches"]))
        results[mode].update({"wrong": wrong, "late_start_s": late, "local": r.get("local_samples", 0)})
        _say("{} {}: mean {:.1f} ms, p95 {:.1f} ms, deadline hit {:.0%}, {} switches".format(
            label(trace), mode, results[mode]["mean_ms"], results[mode]["p95_ms"], results[mode]["deadline_hit"],
            results[mode]["switches"]))
    return results, reports


def run_mode(trace, server, cache, data, n, mode, report, args, quota, number, count):
    """One run-edge over a fresh TraceLink whose trace starts ``--lead-s`` from now; (rc, stderr, start)."""
    start_at = time.time() + args.lead_s
    _say("{} [{}/{}] {} ({:.0f} s of trace, {} samples)".format(label(trace), number, count, mode, args.seconds, n))
    if os.path.exists(report):
        os.remove(report)
    with tracelink.TraceLink(server.target, up=trace, down=tracelink.Trace.constant(DOWN_MBIT),
                             delay_ms=args.rtt_ms / 2.0, start_unix=start_at) as link:
        argv = edge_argv(link.address, cache, data, n, mode, report,
                         ["--interval-ms", str(args.interval_ms), "--start-at", repr(start_at),
                          "--timeout", "120", "--warmup", "1"])
        rc, err = run_edge(argv, quota, args.lead_s + 20 * args.seconds + 600)
    return rc, err, start_at


def costs_from_runs(reports):
    """Split -> (edge ms, cloud ms, bytes up, bytes down) from the static runs' medians."""
    costs = {}
    for mode, r in reports.items():
        if mode.startswith("static:"):
            k = int(mode.split(":")[1])
            costs[k] = (r["edge_ms"]["p50"], r["cloud_ms"]["p50"] + r["queue_ms"]["p50"],
                        r["bytes_sent_per_sample"], r["bytes_received_per_sample"])
    return costs


def add_oracles(trace, results, reports, args, n):
    costs = costs_from_runs(reports)
    if not costs:
        return {}
    down = tracelink.Trace.constant(DOWN_MBIT)
    delay = args.rtt_ms / 2.0
    for k in costs:
        results["static:{}".format(k)]["simulated_ms"] = float(np.mean(
            simulate(trace, down, lambda i, t, k=k: k, costs, n, args.interval_ms, delay)))
    for mode in ("auto", "adaptive"):  # its own choices with the static runs' compute: decisions apart from noise
        chosen = reports[mode]["timeline"]["split"] if mode in reports else None
        if chosen and len(chosen) == n and set(chosen) <= set(costs):
            results[mode]["simulated_ms"] = float(np.mean(
                simulate(trace, down, lambda i, t: chosen[i], costs, n, args.interval_ms, delay)))
    k, lat = oracle_static(trace, down, costs, n, args.interval_ms, delay)
    results["oracle_static"] = dict(summarize(lat, args.deadline_ms), split=k)
    chosen, lat = oracle_interval(trace, down, costs, n, args.interval_ms, delay)
    results["oracle_interval"] = dict(summarize(lat, args.deadline_ms),
                                      switches=int(sum(1 for a, b in zip(chosen, chosen[1:]) if a != b)))
    return {"oracle_interval_splits": chosen}


# ---------------------------------------------------------------- output

def best_static(results):
    static = {m: r for m, r in results.items()
              if m.startswith("static:") and "mean_ms" in r and not r["lost"] and not r.get("wrong")}
    return min(static, key=lambda m: static[m]["mean_ms"]) if static else None


def format_table(all_results):
    lines = ["| trace | mode | mean ms | p50 ms | p95 ms | within deadline | samples | lost | switches "
             "| vs best static | vs per-second oracle | simulated mean ms |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, results in all_results.items():
        best = best_static(results)
        oracle = results.get("oracle_interval", {}).get("mean_ms")
        for mode, r in results.items():
            if "skipped" in r:
                lines.append("| {} | {} | not run: {} | | | | | | | | | |".format(name, mode, r["skipped"]))
                continue
            if "mean_ms" not in r:
                lines.append("| {} | {} | failed: {} | | | | | {} | | | | |".format(name, mode, r.get("error"),
                                                                         r["lost"]))
                continue
            label = mode + (" (split {})".format(r["split"]) if "split" in r else "") + \
                (" **best static**" if mode == best else "")
            lines.append("| {} | {} | {:.1f} | {:.1f} | {:.1f} | {:.0%} | {} | {} | {} | {} | {} | {} |".format(
                name, label, r["mean_ms"], r["p50_ms"], r["p95_ms"], r["deadline_hit"], r["samples"], r["lost"],
                r["switches"], "{:.2f}x".format(r["mean_ms"] / results[best]["mean_ms"]) if best else "",
                "{:.2f}x".format(r["mean_ms"] / oracle) if oracle else "",
                "{:.1f}".format(r["simulated_ms"]) if "simulated_ms" in r else ""))
    return "\n".join(lines)


def plot(path, trace, results, reports, seconds, interval_ms):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_rate, ax_split, ax_lat) = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    rates = trace.rates_mbit(1.0, seconds)
    ax_rate.step(np.arange(len(rates)), rates, where="post", color="tab:gray")
    ax_rate.set_ylabel("uplink Mbit/s")
    ax_rate.set_title("{}: a sample every {:g} ms".format(label(trace), interval_ms))
    best = best_static(results)
    adaptive = reports.get("adaptive")
    if adaptive:
        t = np.asarray(adaptive["timeline"]["release_s"])
        ax_split.step(t, adaptive["timeline"]["split"], where="post", label="adaptive")
        ax_lat.plot(t, adaptive["timeline"]["from_release_ms"], ".", ms=3, label="adaptive")
    if best and best in reports:
        r = reports[best]
        ax_split.axhline(int(best.split(":")[1]), color="tab:orange", ls="--", label=best + " (best static)")
        ax_lat.plot(r["timeline"]["release_s"], r["timeline"]["from_release_ms"], ".", ms=3, color="tab:orange",
                    label=best)
    ax_split.set_ylabel("split")
    ax_split.set_ylim(-1, 23)
    ax_split.legend(loc="upper right", fontsize=8)
    ax_lat.set_ylabel("latency from release, ms")
    ax_lat.set_yscale("log")
    ax_lat.set_xlabel("trace time, s")
    ax_lat.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=110)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)


# ---------------------------------------------------------------- main

def parse_splits(text):
    """Sorted split points from "0,3,20"; None unless every one is a point 0..22 of the seed's ResNet-50."""
    try:
        splits = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        return None
    return splits if splits and all(0 <= k <= 22 for k in splits) else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", action="append", required=True, help="an uplink trace (repeat for several)")
    parser.add_argument("--edge-cpu", type=float, default=0.5,
                        help="the edge's CPU quota in cores (needs root and cgroup v1; 0: no quota)")
    parser.add_argument("--cloud-threads", type=int, default=0,
                        help="serve-cloud --threads (0: one per core; the edge computes only while the cloud "
                             "waits, one request being in flight)")
    parser.add_argument("--splits", default="0,3,10,16,20,22", help="static splits to run")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of each trace to run")
    parser.add_argument("--interval-ms", type=float, default=100.0, help="a sample released every this many ms")
    parser.add_argument("--deadline-ms", type=float, default=150.0)
    parser.add_argument("--rtt-ms", type=float, default=40.0, help="round-trip propagation delay added to the link")
    parser.add_argument("--lead-s", type=float, default=8.0,
                        help="seconds before the trace's zero for connecting, planning and warm-up")
    parser.add_argument("--modes", default=None, help="comma-separated subset of static:K, auto, adaptive")
    parser.add_argument("--reuse", action="store_true",
                        help="with --modes: take the other modes from the reports an earlier run left in --out "
                             "(only those made with the same trace and settings)")
    parser.add_argument("--weights", default=None, help="a state_dict in the seed's layout (default: calibrated "
                                                        "random weights)")
    parser.add_argument("--out", default="/tmp/edgesplit-traces")
    args = parser.parse_args(argv)
    splits = parse_splits(args.splits)
    if splits is None:
        parser.error("--splits {!r}: give split points of the seed's ResNet-50 (0 to 22), comma-separated, "
                     "e.g. 0,3,20,22".format(args.splits))
    if args.seconds <= 0 or args.interval_ms <= 0 or args.deadline_ms <= 0 or args.rtt_ms < 0:
        parser.error("--seconds, --interval-ms and --deadline-ms must be positive, --rtt-ms not negative")
    if args.weights and not os.path.isfile(args.weights):
        parser.error("--weights {} is not a file; give a state_dict in the seed's layout, or leave it out".format(
            args.weights))
    try:
        traces = [tracelink.load_trace(path) for path in args.trace]
    except tracelink.TraceError as exc:
        sys.stderr.write("traces: {}\n".format(exc))
        return 2
    modes = ["static:{}".format(k) for k in splits] + ["auto", "adaptive"]
    reuse = ()
    if args.modes:
        wanted = [m.strip() for m in args.modes.split(",") if m.strip()]
        unknown = [m for m in wanted if m not in modes]
        if unknown:
            parser.error("--modes: {} not among {}".format(", ".join(unknown), ", ".join(modes)))
        if args.reuse:  # the others from the reports already in --out, where made with the same settings
            reuse = [m for m in modes if m not in wanted]
        else:
            modes = wanted
    quota = None
    if args.edge_cpu:
        import emulate
        if os.geteuid() != 0 or not os.path.isdir(emulate.CGROUP_CPU):
            sys.stderr.write("traces: --edge-cpu {} needs root and a cgroup-v1 cpu controller at {}; run as root, "
                             "or pass --edge-cpu 0 to run the edge at this machine's full speed\n".format(
                                 args.edge_cpu, emulate.CGROUP_CPU))
            return 2
        quota = emulate.CpuQuota(args.edge_cpu, "edgesplit-traces-{}".format(os.getpid()))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("traces: terminated"))  # so every exit path cleans up
    os.makedirs(args.out, exist_ok=True)
    n = int(args.seconds * 1000.0 / args.interval_ms)
    to_run = [m for m in modes if m not in reuse]
    store, data = prepare(args.out, args.weights or default_weights(args.out), n, to_run)
    labels = np.load(data)["y"].tolist()
    cache = os.path.join(args.out, "edge")
    server = start_server(store, args.cloud_threads)
    all_results, failed = {}, []
    try:
        if quota is not None:
            quota.__enter__()
        fill_cache(server, cache, data, to_run, quota)
        for trace in traces:
            name = label(trace)
            work = os.path.join(args.out, name)
            os.makedirs(work, exist_ok=True)
            results, reports = run_trace(trace, server, cache, data, labels, modes, args, quota, work, store,
                                         reuse)
            extra = add_oracles(trace, results, reports, args, n)
            all_results[name] = results
            failed += ["{} {}".format(name, m) for m, r in results.items()
                       if r.get("lost") or r.get("wrong") or r.get("local")]
            with open(os.path.join(work, "oracle.json"), "w") as f:
                json.dump(extra, f)
            plot(os.path.join(args.out, "{}.png".format(name)), trace, results, reports, args.seconds,
                 args.interval_ms)
            with open(os.path.join(args.out, "results.json"), "w") as f:
                json.dump(all_results, f, indent=1)
    except RuntimeError as exc:  # a setup step failed: its own message says which
        _say(str(exc))
        return 1
    finally:
        server.stop()
        if quota is not None:
            quota.__exit__()
    print(format_table(all_results))
    _say("wrote results.json and a PNG per trace in {}".format(args.out))
    if failed:
        _say("FAILED: lost or wrong samples in " + ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
