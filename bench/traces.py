#!/usr/bin/env python3
"""Split inference on real networks: every mode against the same replayed trace, and two oracles.

For each ``--trace`` (Mahimahi or ``seconds,mbit`` CSV; bench/tracelink.py), from the
same start of the trace and on the same samples, this runs

* ``static:K`` for every K in ``--splits`` (``run-edge --split K``),
* ``auto``: ``run-edge --split auto``, planned once at the start,
* ``adaptive``: ``run-edge --split auto --adaptive``,
* ``local``: ``run-edge --split local``, the whole model on the edge, no cloud and no link,
* ``hedged:adaptive`` (and, named in ``--modes``, ``hedged:K`` and ``hedged:auto``): the same with
  ``--deadline-ms`` of ``--hedge-ms``: a frame whose reply is not back in time is finished on the edge,
  and frames that find the link still busy with a late request run on the edge whole,

each a real ``run-edge`` process (ONNX, one thread, in a CPU quota of ``--edge-cpu``
cores where cgroups allow: a Jetson-speed head) against one ``serve-cloud`` (a
thread per core by default; local: none) through a fresh TraceLink: the uplink replays the trace, the downlink is a
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
samples; only local and the hedged modes may answer on the edge.  With ``--repeat R``
the modes run R times, interleaved (every mode once, then every mode again), each from
the trace's start, and a mode's figures are the median over its repetitions.  Two oracles
come from the trace and the compute times the static runs measured (median edge and
cloud ms per split, bytes per sample each way; the whole model's edge ms from the local
run, else split 22's), through a simulation of the same link (``simulate``: one request
at a time, each upload starting on an empty queue and leaving at the trace's delivery
opportunities; a local choice leaves the link alone):

* ``oracle_static``: the best split of ``--splits``, or local, in hindsight, all run long;
* ``oracle_interval``: per second of the trace, the split (or local) best for that
  second's samples (given the queue the seconds before left), switching for free.

The simulation is checked against the measured static and local runs (``simulated_ms``
beside ``mean_ms``); for ``auto`` and ``adaptive`` ``simulated_ms`` is their own
per-sample choice of split with the static runs' compute times, which tells the quality
of the decisions apart from this machine's run-to-run variation in compute; for
``hedged:K`` it is ``simulate_hedged``.  Every mode's mean is compared with the best of
the static splits and local, and with the per-second oracle.  Output in ``--out``:
``results.json`` (``{trace: {mode: {mean_ms, p50_ms, p95_ms, deadline_hit, samples,
lost, switches}}}``, ``deadline_hit`` the share of samples answered within
``--deadline-ms``; a hedged mode's ``paths``, ``late_replies`` and ``hedge_reasons``;
each repetition's figures in ``reps``), the run reports, a Markdown table on stdout and
a PNG per trace (the trace's rate, adaptive's split over time, latency per sample of
adaptive, the best static split and local, and of the hedged run marked by the path
that answered each frame)::

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
LOCAL = "local"  # the whole model on the edge (run-edge --split local), a choice of the oracles
PATHS = ("cloud", "hedged", "local")  # how a hedged run answered a frame


def label(trace):
    """A trace's name without its extension (``ATT-LTE-driving-2016``)."""
    return os.path.splitext(trace.name)[0]


def _say(message):
    sys.stderr.write("traces: {}\n".format(message))
    sys.stderr.flush()


# ---------------------------------------------------------------- the simulated link (pure)

def answered_at(up, down, cost, start, delay_ms):
    """When a request started at ``start`` on an idle link is answered, ``cost`` being (edge ms, cloud ms, bytes
    up, bytes down): its upload starts after the head and leaves at ``up``'s opportunities (``Trace.finish_ms``),
    arrives ``delay_ms`` later, the tail runs, the reply leaves at ``down``'s and arrives ``delay_ms`` later."""
    edge_ms, cloud_ms, b_up, b_down = cost
    sent = up.finish_ms(start + edge_ms, b_up)
    return down.finish_ms(sent + delay_ms + cloud_ms, b_down) + delay_ms


def simulate(up, down, choose, costs, n, interval_ms, delay_ms):
    """Latencies (ms from release) of ``n`` samples released every ``interval_ms`` from trace time 0.

    ``choose(i, t_ms)`` gives sample i's split, or LOCAL; ``costs[k]`` is (edge ms, cloud ms, bytes up, bytes
    down) of split k, ``costs[LOCAL]`` the whole model's edge ms first.  One request at a time, as run-edge
    --inflight 1: sample i starts when released or when sample i-1 is answered, whichever is later; a split's
    request is answered as ``answered_at`` says, a local one the whole model's time after its start, the link
    untouched.
    """
    latencies, free = [], 0.0
    for i in range(n):
        release = i * interval_ms
        start = max(release, free)
        k = choose(i, start)
        free = start + costs[LOCAL][0] if k == LOCAL else answered_at(up, down, costs[k], start, delay_ms)
        latencies.append(free - release)
    return latencies


def simulate_hedged(up, down, k, costs, n, interval_ms, delay_ms, hedge_ms):
    """(latencies, paths) of ``run-edge --split k --deadline-ms hedge_ms`` over the link ``simulate`` models.

    The edge runs one frame at a time.  A frame that finds the link free is sent at split k; if its reply would
    come after ``release + hedge_ms`` less the rest of the model on the edge (the whole model's edge ms less
    split k's head; never before the head is done), the edge gives up on it then and finishes it itself (path
    "hedged"), and the link stays busy until the late reply is in.  A frame that starts while the link is still
    busy so runs the whole model on the edge (path "local"); the others are "cloud".
    """
    whole, head = costs[LOCAL][0], costs[k][0]
    rest = max(whole - head, 0.0)
    latencies, paths, edge_free, link_free = [], [], 0.0, 0.0
    for i in range(n):
        release = i * interval_ms
        start = max(release, edge_free)
        if link_free > start:
            path, edge_free = "local", start + whole
        else:
            reply = answered_at(up, down, costs[k], start, delay_ms)
            give_up = max(release + hedge_ms - rest, start + head)
            if reply <= give_up:
                path, edge_free = "cloud", reply
            else:
                path, edge_free, link_free = "hedged", give_up + rest, reply
        latencies.append(edge_free - release)
        paths.append(path)
    return latencies, paths


def _in_order(costs):
    """The splits of ``costs`` in order, LOCAL last (ties go to the earlier)."""
    return sorted(costs, key=lambda k: (k == LOCAL, 0 if k == LOCAL else k))


def oracle_static(up, down, costs, n, interval_ms, delay_ms):
    """(split, latencies) of the split (or LOCAL) with the lowest mean latency over the whole run."""
    best = None
    for k in _in_order(costs):
        lat = simulate(up, down, lambda i, t, k=k: k, costs, n, interval_ms, delay_ms)
        if best is None or np.mean(lat) < np.mean(best[1]):
            best = (k, lat)
    return best


def oracle_interval(up, down, costs, n, interval_ms, delay_ms, step_ms=1000.0):
    """(splits per sample, latencies): per ``step_ms`` of the trace, the split (or LOCAL) best for that step's
    samples.

    Greedy in time: each step is decided given the queue the steps before it left (the
    first sample of a step may still wait for the last of the one before)."""
    per_step = int(round(step_ms / interval_ms)) or 1
    chosen = []
    for first in range(0, n, per_step):
        count = min(per_step, n - first)
        best = None
        for k in _in_order(costs):
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


REP_FIGURES = ("mean_ms", "p50_ms", "p95_ms", "deadline_hit")  # the median over repetitions
REP_COUNTS = ("lost", "wrong", "local")  # summed over repetitions


def median_rep(reps):
    """The index of the repetition whose mean is the median (the lower of the middle two for an even count)."""
    order = np.argsort([r["mean_ms"] for r in reps], kind="stable")
    return int(order[(len(reps) - 1) // 2])


def combine_reps(reps):
    """One mode's figures over its repetitions: the median of their means, p50s, p95s and shares within the
    deadline, their lost, wrong and local samples summed, the rest from the median repetition, and every
    repetition's own figures in ``reps`` (where there are several).  A failed repetition fails the mode."""
    if len(reps) == 1:
        return reps[0]
    failed = [r for r in reps if "mean_ms" not in r]
    out = dict(failed[0] if failed else reps[median_rep(reps)])
    if not failed:
        out.update({f: float(np.median([r[f] for r in reps])) for f in REP_FIGURES})
    out.update({f: sum(r.get(f, 0) for r in reps) for f in REP_COUNTS if any(f in r for r in reps)})
    out["reps"] = reps
    return out


# ---------------------------------------------------------------- processes

def start_server(store, threads=0):
    """serve-cloud on a free loopback port (bench/speed.py's Server), with ``target`` for TraceLink."""
    server = speed.Server([sys.executable, CLI, "serve-cloud", "--port", "0", "--artifacts", store,
                           "--threads", str(threads)], "listening on")
    host, port = server.address.rsplit(":", 1)
    server.target = (host, int(port))
    return server


def hedged_base(mode):
    """The mode a hedged mode hedges: hedged:K -> static:K, hedged:auto -> auto, hedged:adaptive -> adaptive."""
    base = mode.split(":", 1)[1]
    return base if base in ("auto", "adaptive") else "static:" + base


def split_flags(mode, hedge_ms):
    """run-edge's options for a mode: static:K, auto, adaptive, local, or hedged: one of the first three with
    ``--deadline-ms hedge_ms``."""
    if mode.startswith("hedged:"):
        return split_flags(hedged_base(mode), hedge_ms) + ["--deadline-ms", "{:g}".format(hedge_ms)]
    if mode.startswith("static:"):
        return ["--split", mode.split(":", 1)[1]]
    if mode == LOCAL:
        return ["--split", LOCAL]
    return ["--split", "auto"] + (["--adaptive"] if mode == "adaptive" else [])


def edge_argv(address, cache, data, limit, flags, report, extra=()):
    """A run-edge command line; ``address`` None for a run without the cloud (local)."""
    argv = [sys.executable, CLI, "run-edge"] + (["--cloud", address] if address else [])
    return argv + ["--cache", cache] + list(flags) + [
        "--dataset", "npz:" + data, "--limit", str(limit), "--threads", "1", "--report", report,
        "--cache-keep", str(CACHE_KEEP)] + list(extra)


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
    """The bundles the modes may use: every split for auto and adaptive (hedged or not), a static or hedged
    split's own, and split 22 (the whole model) for local and for the frames a hedged run finishes on the edge."""
    needed = set()
    for mode in modes:
        base = hedged_base(mode) if mode.startswith("hedged:") else mode
        if base in ("auto", "adaptive"):
            return list(ALL_SPLITS)
        if base.startswith("static:"):
            needed.add(int(base.split(":")[1]))
        if base != mode or mode == LOCAL:
            needed.add(22)
    return sorted(needed)


def known_modes(splits):
    """Every mode ``--modes`` may name, given the static splits."""
    return (["static:{}".format(k) for k in splits] + ["auto", "adaptive", LOCAL]
            + ["hedged:{}".format(k) for k in splits] + ["hedged:auto", "hedged:adaptive"])


def default_modes(splits):
    return ["static:{}".format(k) for k in splits] + ["auto", "adaptive", LOCAL, "hedged:adaptive"]


def parse_modes(text, splits):
    """The modes of a comma-separated list, in order, each once; a ValueError names any not among ``known_modes``."""
    wanted = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    known = known_modes(splits)
    unknown = [m for m in wanted if m not in known]
    if unknown or not wanted:
        raise ValueError("{} not among {}".format(", ".join(unknown) or "no mode", ", ".join(known)))
    return wanted


def serves_locally(mode):
    """Whether the mode answers frames on the edge by design: local, hedged, and the planned ones, which may choose
    local (a static split's local answer is the cloud lost)."""
    return not mode.startswith("static:")


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
        rc, err = run_edge(edge_argv(server.address, cache, data, 1, split_flags("static:{}".format(k), 0), os.devnull,
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


def run_params(trace, args, n, mode):
    """What a run's figures depend on: a report is reused (--reuse) only under the same."""
    params = {"trace": trace.name, "trace_period_ms": trace.period_ms, "opportunities": len(trace.times),
              "samples": n, "interval_ms": args.interval_ms, "rtt_ms": args.rtt_ms, "edge_cpu": args.edge_cpu,
              "cloud_threads": args.cloud_threads, "weights": args.weights}
    if mode.startswith("hedged:"):
        params["hedge_ms"] = args.hedge_ms
    return params


def reused(report, params):
    """The start time recorded beside ``report`` when it was made under ``params``, else None."""
    try:
        with open(report + ".params") as f:
            side = json.load(f)
        return side["start_at"] if side["params"] == params and os.path.exists(report) else None
    except (OSError, ValueError, KeyError):
        return None


def report_path(work, mode, rep):
    """Where a repetition's report goes: ``MODE.json`` for the first (as without --repeat), ``MODE.repR.json``
    for repetition R from 2 on."""
    stem = os.path.join(work, mode.replace(":", "-"))
    return stem + (".json" if rep == 0 else ".rep{}.json".format(rep + 1))


def run_trace(trace, server, cache, data, labels, modes, args, quota, work, store, reuse=()):
    """Every mode over one trace, ``--repeat`` times interleaved (every mode once, then every mode again, ...),
    each from the trace's start; those in ``reuse`` from an earlier run's reports, where they match.  Returns
    ({mode: figures over its repetitions}, {mode: the report of its median repetition})."""
    skipped, runs = {}, {}
    for mode in modes:
        unfit = cannot_carry(trace, mode, store, args.interval_ms, args.seconds)
        if unfit:
            skipped[mode] = {"skipped": unfit, "samples": 0, "lost": 0}
            _say("{} {}: not run: {}".format(label(trace), mode, unfit))
        else:
            runs[mode] = []
    for rep in range(args.repeat):
        for number, mode in enumerate(runs, 1):
            done = one_run(trace, server, cache, data, labels, mode, rep, args, quota, work, reuse,
                           "[{}/{}]".format(number, len(runs)))
            if done is not None:
                runs[mode].append(done)
    results, reports = {}, {}
    for mode in modes:
        done = runs.get(mode)
        if mode in skipped:
            results[mode] = skipped[mode]
        elif done:  # else: not asked for, and no report of it under these settings: left out
            results[mode] = combine_reps([figures for figures, _ in done])
            ran = [(figures, r) for figures, r in done if r is not None]
            if ran:
                reports[mode] = ran[median_rep([figures for figures, _ in ran])][1]
    return results, reports


def one_run(trace, server, cache, data, labels, mode, rep, args, quota, work, reuse, counter):
    """One repetition of one mode, run, or taken from an earlier run's report where the mode is in ``reuse``:
    (figures, report), report None where the run failed; None where a reused mode has no matching report."""
    n = len(labels)
    report = report_path(work, mode, rep)
    params = run_params(trace, args, n, mode)
    start_at = reused(report, params) if mode in reuse else None
    if mode in reuse and start_at is None:
        return None
    name = "{} {}".format(label(trace), mode) + (" (repetition {})".format(rep + 1) if args.repeat > 1 else "")
    if start_at is not None:
        _say("{}: reusing the earlier run's report".format(name))
        rc, err = 0, ""
    else:
        _say("{} {} {} ({:.0f} s of trace, {} samples{})".format(
            label(trace), counter, mode, args.seconds, n,
            ", repetition {} of {}".format(rep + 1, args.repeat) if args.repeat > 1 else ""))
        rc, err, start_at = run_mode(trace, server, cache, data, n, mode, report, args, quota)
        if rc == 0:
            with open(report + ".params", "w") as f:
                json.dump({"params": params, "start_at": start_at}, f)
    if rc != 0 or not os.path.exists(report):
        error = err.strip().splitlines()[-1] if err.strip() else "exit {}".format(rc)
        _say("{}: FAILED: {}".format(name, error))
        return {"error": error, "samples": 0, "lost": n}, None
    with open(report) as f:
        r = json.load(f)
    figures = figures_of(mode, r, labels, start_at, args.deadline_ms)
    if figures["late_start_s"] > 0.5:
        _say("{}: started {:.1f} s after the trace's zero (raise --lead-s)".format(name, figures["late_start_s"]))
    _say("{}: mean {:.1f} ms, p95 {:.1f} ms, deadline hit {:.0%}, {} switches".format(
        name, figures["mean_ms"], figures["p95_ms"], figures["deadline_hit"], figures["switches"]))
    return figures, r


def figures_of(mode, r, labels, start_at, deadline_ms):
    """A run's figures from its report: latency from release, samples lost and mis-answered against ``labels``,
    how late it started, samples answered on the edge, and a hedged run's paths."""
    n = len(labels)
    figures = summarize(r["timeline"]["from_release_ms"], deadline_ms, r["n"], lost=n - r["n"],
                        switches=len(r.get("switches") or ()))
    figures.update({"wrong": sum(1 for a, b in zip(r["predictions"], labels) if a != b),
                    "late_start_s": r["started_unix"] - start_at, "local": r["served_by"].count("local")})
    if mode.startswith("hedged:"):
        figures.update({key: r[key] for key in ("paths", "late_replies", "hedge_reasons") if key in r})
    return figures


def run_mode(trace, server, cache, data, n, mode, report, args, quota):
    """One run-edge whose trace starts ``--lead-s`` from now, over a fresh TraceLink (local: no link, no cloud);
    (rc, stderr, start)."""
    start_at = time.time() + args.lead_s
    if os.path.exists(report):
        os.remove(report)
    flags = split_flags(mode, args.hedge_ms)
    extra = ["--interval-ms", str(args.interval_ms), "--start-at", repr(start_at), "--warmup", "1"]
    timeout_s = args.lead_s + 20 * args.seconds + 600
    if mode == LOCAL:
        rc, err = run_edge(edge_argv(None, cache, data, n, flags, report, extra), quota, timeout_s)
        return rc, err, start_at
    with tracelink.TraceLink(server.target, up=trace, down=tracelink.Trace.constant(DOWN_MBIT),
                             delay_ms=args.rtt_ms / 2.0, start_unix=start_at) as link:
        rc, err = run_edge(edge_argv(link.address, cache, data, n, flags, report, extra + ["--timeout", "120"]),
                           quota, timeout_s)
    return rc, err, start_at


def costs_from_runs(reports):
    """Split -> (edge ms, cloud ms, bytes up, bytes down) from the static runs' medians, and LOCAL -> (the whole
    model's edge ms, 0, 0, 0): the local run's median, else split 22's edge ms (its head is the whole model)."""
    costs = {}
    for mode, r in reports.items():
        if mode.startswith("static:"):
            k = int(mode.split(":")[1])
            costs[k] = (r["edge_ms"]["p50"], r["cloud_ms"]["p50"] + r["queue_ms"]["p50"],
                        r["bytes_sent_per_sample"], r["bytes_received_per_sample"])
    if LOCAL in reports:  # the whole model is its edge time, or its local time where it keeps them apart
        r = reports[LOCAL]
        costs[LOCAL] = (r["edge_ms"]["p50"] or r.get("local_ms", {}).get("p50", 0.0), 0.0, 0, 0)
    elif 22 in costs:
        costs[LOCAL] = (costs[22][0], 0.0, 0, 0)
    return costs


def replay(mode, report, up, down, costs, n, interval_ms, delay_ms, hedge_ms):
    """A measured mode's latencies through the simulated link with the static runs' compute, or None where it
    has no replay: a static split or local as itself, auto and adaptive by their own per-frame choices (the
    quality of their decisions apart from this machine's variation in compute), hedged:K by ``simulate_hedged``."""
    if mode.startswith("hedged:"):
        base = hedged_base(mode)
        k = int(base.split(":")[1]) if base.startswith("static:") else None
        if k not in costs or LOCAL not in costs:
            return None
        return simulate_hedged(up, down, k, costs, n, interval_ms, delay_ms, hedge_ms)[0]
    if mode.startswith("static:"):
        chosen = [int(mode.split(":")[1])] * n
    elif mode == LOCAL:
        chosen = [LOCAL] * n
    else:
        chosen = report["timeline"]["split"]
    if len(chosen) != n or not set(chosen) <= set(costs):
        return None
    return simulate(up, down, lambda i, t: chosen[i], costs, n, interval_ms, delay_ms)


def add_oracles(trace, results, reports, args, n):
    """Each measured mode's ``simulated_ms`` and the two oracles (which may choose local) into ``results``;
    returns the per-second oracle's choices."""
    costs = costs_from_runs(reports)
    if not any(k != LOCAL for k in costs):
        return {}
    down = tracelink.Trace.constant(DOWN_MBIT)
    delay = args.rtt_ms / 2.0
    for mode, report in reports.items():
        lat = replay(mode, report, trace, down, costs, n, args.interval_ms, delay, args.hedge_ms)
        if lat is not None:
            results[mode]["simulated_ms"] = float(np.mean(lat))
    k, lat = oracle_static(trace, down, costs, n, args.interval_ms, delay)
    results["oracle_static"] = dict(summarize(lat, args.deadline_ms), split=k)
    chosen, lat = oracle_interval(trace, down, costs, n, args.interval_ms, delay)
    results["oracle_interval"] = dict(summarize(lat, args.deadline_ms),
                                      switches=int(sum(1 for a, b in zip(chosen, chosen[1:]) if a != b)))
    return {"oracle_interval_splits": chosen}


# ---------------------------------------------------------------- output

def best_mode(results, local=True):
    """The static split (and, with ``local``, the local mode) of the lowest mean among the runs that lost and
    mis-answered nothing; None where there is none."""
    fit = {m: r for m, r in results.items() if (m.startswith("static:") or (local and m == LOCAL))
           and "mean_ms" in r and not r["lost"] and not r.get("wrong")}
    return min(fit, key=lambda m: fit[m]["mean_ms"]) if fit else None


def ratios(results):
    """Mode -> (its mean against the best static split or local's, against the per-second oracle's), each None
    where that reference is missing."""
    best = best_mode(results)
    oracle = results.get("oracle_interval", {}).get("mean_ms")
    return {m: (r["mean_ms"] / results[best]["mean_ms"] if best else None, r["mean_ms"] / oracle if oracle else None)
            for m, r in results.items() if "mean_ms" in r}


def mode_label(mode, r, best):
    """A mode's name in the table: an oracle's split, a hedged run's requests per path, the best marked."""
    text = mode
    if "split" in r:
        text += " ({})".format(LOCAL if r["split"] == LOCAL else "split {}".format(r["split"]))
    if r.get("paths"):
        text += " ({})".format(", ".join("{} {}".format(p, r["paths"][p]["requests"]) for p in PATHS
                                         if p in r["paths"]))
    return text + (" **best static or local**" if mode == best else "")


def _times(value):
    return "" if value is None else "{:.2f}x".format(value)


def format_table(all_results):
    repeat = max([len(r.get("reps", ())) for results in all_results.values() for r in results.values()] + [1])
    lines = ["| trace | mode | mean ms{} | p50 ms | p95 ms | within deadline | samples | lost | switches "
             "| vs best static or local | vs per-second oracle | simulated mean ms |".format(
                 " (median of {} runs)".format(repeat) if repeat > 1 else ""),
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, results in all_results.items():
        best = best_mode(results)
        against = ratios(results)
        for mode, r in results.items():
            if "skipped" in r:
                lines.append("| {} | {} | not run: {} | | | | | | | | | |".format(name, mode, r["skipped"]))
                continue
            if "mean_ms" not in r:
                lines.append("| {} | {} | failed: {} | | | | | {} | | | | |".format(name, mode, r.get("error"),
                                                                         r["lost"]))
                continue
            lines.append("| {} | {} | {:.1f} | {:.1f} | {:.1f} | {:.0%} | {} | {} | {} | {} | {} | {} |".format(
                name, mode_label(mode, r, best), r["mean_ms"], r["p50_ms"], r["p95_ms"], r["deadline_hit"],
                r["samples"], r["lost"], r["switches"], _times(against[mode][0]), _times(against[mode][1]),
                "{:.1f}".format(r["simulated_ms"]) if "simulated_ms" in r else ""))
    return "\n".join(lines)


def hedged_shown(reports):
    """The hedged run the chart shows: hedged:adaptive where there is one, else the first."""
    hedged = [m for m in reports if m.startswith("hedged:")]
    return "hedged:adaptive" if "hedged:adaptive" in hedged else (hedged[0] if hedged else None)


def plot(path, trace, results, reports, seconds, interval_ms, hedge_ms):
    """The trace's rate, adaptive's split, the latency per sample of adaptive, the best static split and local,
    and that of a hedged run marked by the path that answered each frame."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_rate, ax_split, ax_lat, ax_hedge) = plt.subplots(4, 1, figsize=(10, 10), sharex=True)
    rates = trace.rates_mbit(1.0, seconds)
    ax_rate.step(np.arange(len(rates)), rates, where="post", color="tab:gray")
    ax_rate.set_ylabel("uplink Mbit/s")
    ax_rate.set_title("{}: a sample every {:g} ms".format(label(trace), interval_ms))
    best = best_mode(results, local=False)
    local = reports.get(LOCAL)
    for mode, color in (("adaptive", "tab:blue"), (best, "tab:orange")):
        if mode in reports:
            timeline = reports[mode]["timeline"]
            ax_lat.plot(timeline["release_s"], timeline["from_release_ms"], ".", ms=3, color=color,
                        label=mode + (" (best static)" if mode == best else ""))
    if "adaptive" in reports:
        ax_split.step(reports["adaptive"]["timeline"]["release_s"], reports["adaptive"]["timeline"]["split"],
                      where="post", label="adaptive")
    if best in reports:
        ax_split.axhline(int(best.split(":")[1]), color="tab:orange", ls="--", label=best + " (best static)")
    for ax in (ax_lat, ax_hedge) if local else ():
        ax.plot(local["timeline"]["release_s"], local["timeline"]["from_release_ms"], "-", lw=0.8, color="tab:green",
                label=LOCAL)
    hedged = hedged_shown(reports)
    if hedged:
        timeline = reports[hedged]["timeline"]
        paths = timeline.get("path") or ["cloud"] * len(timeline["release_s"])
        for path_name, marker, color in zip(PATHS, (".", "x", "^"), ("tab:purple", "tab:red", "tab:green")):
            at = [i for i, p in enumerate(paths) if p == path_name]
            if at:
                ax_hedge.plot([timeline["release_s"][i] for i in at], [timeline["from_release_ms"][i] for i in at],
                              marker, ms=4, ls="none", color=color, label="{}: {} ({})".format(hedged, path_name,
                                                                                               len(at)))
        ax_hedge.axhline(hedge_ms, color="tab:gray", ls=":", lw=0.8, label="--hedge-ms {:g}".format(hedge_ms))
    ax_split.set_ylabel("split")
    ax_split.set_ylim(-1, 23)
    for ax in (ax_split, ax_lat, ax_hedge):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize=8)
    for ax in (ax_lat, ax_hedge):
        ax.set_ylabel("ms from release")
        ax.set_yscale("log")
    ax_hedge.set_xlabel("trace time, s")
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
    parser.add_argument("--deadline-ms", type=float, default=150.0,
                        help="the table's 'within deadline': the share of samples answered this soon after release")
    parser.add_argument("--rtt-ms", type=float, default=40.0, help="round-trip propagation delay added to the link")
    parser.add_argument("--lead-s", type=float, default=8.0,
                        help="seconds before the trace's zero for connecting, planning and warm-up")
    parser.add_argument("--modes", default=None,
                        help="comma-separated, among static:K and hedged:K for K in --splits, auto, adaptive, local, "
                             "hedged:auto, hedged:adaptive (default: every static:K, auto, adaptive, local, "
                             "hedged:adaptive)")
    parser.add_argument("--hedge-ms", type=float, default=150.0,
                        help="a hedged mode's run-edge --deadline-ms: a frame whose reply is not back in time "
                             "is finished on the edge")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the modes this many times, interleaved, each from the trace's start; a mode's "
                             "figures are the median over the repetitions")
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
    if args.seconds <= 0 or args.interval_ms <= 0 or args.deadline_ms <= 0 or args.hedge_ms <= 0 or args.rtt_ms < 0:
        parser.error("--seconds, --interval-ms, --deadline-ms and --hedge-ms must be positive, --rtt-ms not negative")
    if args.repeat < 1:
        parser.error("--repeat {}: give how many times to run each mode, 1 or more".format(args.repeat))
    if args.weights and not os.path.isfile(args.weights):
        parser.error("--weights {} is not a file; give a state_dict in the seed's layout, or leave it out".format(
            args.weights))
    try:
        traces = [tracelink.load_trace(path) for path in args.trace]
    except tracelink.TraceError as exc:
        sys.stderr.write("traces: {}\n".format(exc))
        return 2
    modes = default_modes(splits)
    reuse = ()
    if args.modes:
        try:
            wanted = parse_modes(args.modes, splits)
        except ValueError as exc:
            parser.error("--modes {!r}: {}".format(args.modes, exc))
        if args.reuse:  # the others from the reports already in --out, where made with the same settings
            modes += [m for m in wanted if m not in modes]
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
                       if r.get("lost") or r.get("wrong") or (r.get("local") and not serves_locally(m))]
            with open(os.path.join(work, "oracle.json"), "w") as f:
                json.dump(extra, f)
            plot(os.path.join(args.out, "{}.png".format(name)), trace, results, reports, args.seconds,
                 args.interval_ms, args.hedge_ms)
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
