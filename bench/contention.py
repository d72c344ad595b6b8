#!/usr/bin/env python3
"""Transport on a busy CPU: edgesplit and the seed-style loop under the same load, in the same run.

A real Jetson captures, decodes and preprocesses frames while it infers, and a real
cloud host serves many edges, so the quiet-machine transport figures of
bench/speed.py are only half the story.  Two kinds of load:

* busy loops: ``--busy N`` plain Python processes spinning (``while True: pass``),
  default one per core, started before and stopped after each measured pair;
* a CPU quota: the edge process (run-edge, or the seed-style edge) in a cgroup-v1
  CPU quota of ``--quota`` cores (root only; skipped elsewhere), with the servers free.

For each split (3 and 20) and each load, the seed-style loop (bench/seed_style.py)
and edgesplit (``cli.py serve-cloud`` + ``cli.py run-edge``, as in the speed benchmark:
``--threads 1`` both sides) alternate for ``--rounds`` rounds of ``--limit`` samples;
a figure is the median over rounds of each run's median transmission.  Beside it:
the edge process's CPU time per sample (user + system, warm-up excluded).

Variants (``--variants``) measure what each knob does, under load and quiet, for
finding causes; each is ``name=run-edge flags/serve-cloud flags``::

    python bench/contention.py --busy 2 --variants "defaults=/;no-busy-poll=--no-busy-poll/"

bench/speed.py's ``contention`` check runs the default variant's rows with targets.
"""
import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import speed  # noqa: E402  (the servers, run_edge and the bundles of the speed benchmark)


@contextlib.contextmanager
def busy_loops(n):
    """``n`` processes that each keep a core busy while the block runs."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    time.sleep(0.2)  # running before the first request
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def quota_available():
    """(True, '') where a CPU quota can be set for the edge, else (False, why)."""
    import emulate
    if os.geteuid() != 0:
        return False, "needs root (cgroups)"
    if not os.path.isdir(emulate.CGROUP_CPU):
        return False, "no cgroup-v1 cpu controller at {}".format(emulate.CGROUP_CPU)
    return True, ""


def seed_edge(address, work, split, limit, wrap=None):
    """The seed-style edge as its own process (so a quota can hold it); its JSON result."""
    out = os.path.join(work, "seed-edge-{}.json".format(split))
    argv = [sys.executable, os.path.join(HERE, "seed_style.py"), "edge", "--cloud", address, "--split", str(split),
            "--limit", str(limit), "--threads", "1", "--json", out]
    proc = subprocess.run(wrap(argv) if wrap else argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, env=speed.ENV, cwd=speed.REPO)
    if proc.returncode != 0:
        raise RuntimeError("seed-style edge failed: " + proc.stderr)
    with open(out) as f:
        return json.load(f)


def ours_once(store, work, split, data, limit, edge_flags=(), server_flags=(), wrap=None):
    """(transmission p50 ms, edge CPU ms per sample) of one serve-cloud + run-edge run."""
    srv = speed.ours_server(store, None, *server_flags)
    try:
        r = speed.run_edge(srv.address, work, split, data, limit, *edge_flags, name="contention-{}".format(split),
                           wrap=wrap)
    finally:
        srv.stop()
    return r["transmission_ms"]["p50"], r["edge_cpu_ms_per_sample"]


def seed_once(work, split, limit, wrap=None):
    seed = speed.seed_server()
    try:
        s = seed_edge(seed.address, work, split, limit, wrap)
    finally:
        seed.stop()
    return float(np.median(s["transmission_ms"])), s["cpu_ms_per_sample"]


def measure(store, work, split, data, limit, load, rounds, variants, with_seed=True):
    """{name: (median transmission ms, median CPU ms/sample)} for the seed-style loop ("seed") and each variant,
    alternating within each round under ``load`` (busy loops or a quota; see ``loads``)."""
    runs = {name: [] for name in (["seed"] if with_seed else []) + [v[0] for v in variants]}
    for _ in range(rounds):
        with load.running():
            if with_seed:
                runs["seed"].append(seed_once(work, split, limit, load.wrap))
            for name, edge_flags, server_flags in variants:
                runs[name].append(ours_once(store, work, split, data, limit, edge_flags, server_flags, load.wrap))
    return {name: (float(np.median([r[0] for r in rs])), float(np.median([r[1] for r in rs])))
            for name, rs in runs.items()}


class Load(object):
    """No load, N busy loops, or a CPU quota for the edge: ``running()`` around a round, ``wrap`` for the edge."""

    def __init__(self, label, busy=0, quota=None):
        self.label, self.busy, self.quota = label, busy, quota
        self.wrap = quota.wrap if quota is not None else None

    @contextlib.contextmanager
    def running(self):
        if self.quota is not None:
            with self.quota:
                yield
        else:
            with busy_loops(self.busy):
                yield


def loads(busy, quota_cpus):
    """The loads to measure under: quiet, ``busy`` busy loops, and (root only) the edge in a CPU quota."""
    out = [Load("quiet"), Load("{} busy loops".format(busy), busy=busy)]
    ok, why = quota_available()
    if ok and quota_cpus:
        import emulate
        out.append(Load("edge in a {}-core quota".format(quota_cpus),
                        quota=emulate.CpuQuota(quota_cpus, "edgesplit-contention-{}".format(os.getpid()))))
    elif quota_cpus:
        speed._say("no CPU-quota rows: " + why)
    return out


def check_contention(work, store, data, limit, busy, quota_cpus=0.5, rounds=3):
    """bench/speed.py's rows: transmission vs seed-style under load, and the edge's CPU time per sample."""
    rows = []
    for split in (3, 20):
        quiet_cpu = None
        for load in loads(busy, quota_cpus):
            speed._say("contention: split {}, {}".format(split, load.label))
            m = measure(store, work, split, data, limit, load, rounds, [("ours", (), ())],
                        with_seed=load.label != "quiet")
            ours_ms, ours_cpu = m["ours"]
            if load.label == "quiet":
                quiet_cpu = ours_cpu
                continue
            seed_ms, seed_cpu = m["seed"]
            rows.append(speed.row("contention", "split {} transmission, {}, vs seed-style (same load)".format(
                split, load.label), ours_ms, seed_ms, "<= 0.5x", ours_ms <= 0.5 * seed_ms,
                note="median of {} alternating runs of {} samples".format(rounds, limit)))
            rows.append(speed.row("contention", "split {} edge CPU per sample, {}, vs quiet".format(
                split, load.label), ours_cpu, quiet_cpu, "<= 1x (quiet)", ours_cpu <= quiet_cpu * 1.05,
                note="seed-style edge under the same load: {:.3f} ms".format(seed_cpu)))
    return rows


def _variants(text):
    out = []
    for item in text.split(";"):
        if not item.strip():
            continue
        name, _, flags = item.partition("=")
        edge, _, server = flags.partition("/")
        out.append((name.strip(), tuple(edge.split()), tuple(server.split())))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "edgesplit-contention"))
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 2, help="busy loops (default: one per core)")
    parser.add_argument("--quota", type=float, default=0.5, help="the edge's CPU quota in cores (root; 0: none)")
    parser.add_argument("--limit", type=int, default=64, help="samples per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--splits", default="3,20")
    parser.add_argument("--variants", default="defaults=/", help="name=run-edge flags/serve-cloud flags;...")
    args = parser.parse_args()
    variants = _variants(args.variants)
    if not variants:
        sys.exit("contention: --variants names none")
    work = os.path.join(args.out, "work")
    os.makedirs(work, exist_ok=True)
    store, data, _ = speed.prepare(work, [3, 20])
    lines = ["| split | load | seed-style ms | " + " | ".join("{} ms (ratio) / CPU ms".format(v[0]) for v in variants)
             + " |", "|---:|---|---:|" + "---:|" * len(variants)]
    results = []
    for split in [int(s) for s in args.splits.split(",")]:
        for load in loads(args.busy, args.quota):
            m = measure(store, work, split, data, args.limit, load, args.rounds, variants)
            results.append({"split": split, "load": load.label, "figures": m})
            seed_ms = m["seed"][0]
            lines.append("| {} | {} | {:.3f} | ".format(split, load.label, seed_ms) + " | ".join(
                "{:.3f} ({:.2f}x) / {:.2f}".format(m[v[0]][0], m[v[0]][0] / seed_ms, m[v[0]][1]) for v in variants)
                + " |")
            speed._say(lines[-1])
    print("\n".join(lines))
    with open(os.path.join(args.out, "contention.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
