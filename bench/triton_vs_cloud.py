#!/usr/bin/env python3
"""serve-cloud and NVIDIA Triton side by side (issue 17, point 7): transmission and throughput, same tail, same backend.

One run of this script, on one machine, loopback, ResNet-50 (random weights) at
``--splits`` (default 3 and 20)::

    python bench/triton_vs_cloud.py --out /tmp/triton                     # the full run (under 10 minutes on 2 cores)
    python bench/triton_vs_cloud.py --splits 20 --limit 30 --repeats 1 --edges 2 --out /tmp/triton-smoke

The two clouds serve the same ONNX tail with onnxruntime on the CPU:

* ``cli.py serve-cloud --artifacts STORE`` (its defaults: no batching, onnxruntime's threads), and
* ``cli.py serve-triton`` on a repository that ``cli.py export-triton --platform python`` wrote from the
  same bundles (the python backend running this project's onnx backend; export-triton's defaults:
  ``max_batch_size`` 8, dynamic batching with a 100 us queue delay, one CPU instance).

``--server-arg`` and ``--triton-arg`` (repeatable) add arguments to serve-cloud and to export-triton.
For each repeat (``--repeats``, default 3; the order of the two clouds alternates from one repeat to
the next) and split, against each cloud:

1. **one edge**: ``cli.py run-edge --inflight 1 --batch-size 1 --threads 1 --dataset synthetic``
   (``--limit`` samples after 3 warm-up requests).  Its report gives transmission p50 / p99, the round
   trip p50 (transmission + cloud + queue, see below) and its throughput (samples / its measured wall
   time: one edge, one request at a time).
2. **N edges** (``--edges``, default 8): N such ``run-edge`` processes (each its own shuffled synthetic
   samples, ``--seed i``) started together and lined up with ``--start-at`` (a start far enough ahead for
   all of them to have loaded and warmed up; a late edge is reported on stderr).  Throughput = the
   samples of all edges / (last edge's finish - first edge's first release), from each report's
   ``started_unix`` and ``wall_s``; the sum of the edges' own throughputs is kept in the JSON too.

What the figures mean: against serve-cloud, cloud and queue are measured by the server per request
and sent back in each reply; Triton sends no timing back, so run-edge takes them from Triton's
per-model statistics as **run averages**, and its transmission is each request's round trip minus
them (docs/DEPLOYING.md, "The report's figures against Triton").  Triton's compute time includes the
python backend's stub hand-off, so the fair single number is the **round trip**: for Triton its p50
is exact (transmission p50 + the constant cloud and queue), for serve-cloud it is the sum of the
three p50s (a request's cloud time barely varies at batch 1).  And since Triton's transmission is the
round trip minus an average, at a split with a long tail (split 3: most of the model) it also carries
the tail's own variation from request to request: its p99 there is the tail's spread, not the network's.

Before the timed runs, each split's head runs here on 4 synthetic images and each activation goes to
both servers (serve-cloud: ``runtime.edge.client.CloudConnection``; Triton: tritonclient's gRPC
``infer``), batch 1; the replies are compared with ``np.array_equal`` to the tail run here
(``load_part(manifest, "tail", "onnx", "cpu")``): "bit-identical: yes/no" per split and server.

The table gives each figure's median over the repeats for both clouds and the ratio Triton /
serve-cloud, and the issue's target: the Triton path adds at most 1.5 ms to transmission (p50, one
edge) at split 20 against serve-cloud on loopback (printed as met or not; nothing is asserted).
With ``--out`` it also writes ``triton.csv``, ``triton.json`` (the table, every run's figures, the
bit-identity checks) and ``triton.png`` there.  Everything is exported into a temporary directory,
removed at the end; every server and edge started is stopped at the end, on an error or on Ctrl-C.

Triton comes from NVIDIA's ``tritonserver`` on PATH or nvidia-pytriton's (``make triton-env``;
docs/DEPLOYING.md, "Serving the entries: serve-triton"); without either the script says why and exits 2.
Timings on a 2-core machine vary by 10-20% from run to run; compare the two clouds within one run.
"""
import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
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
CLOUDS = ("serve-cloud", "triton")
TARGET_MS = 1.5  # the target: Triton adds at most this to transmission p50 at split 20
CHECK_SAMPLES = 4
# (key, label, unit, better): the table's rows per split, in order
METRICS = (("transmission_p50", "transmission p50, 1 edge", "ms", "lower"),
           ("transmission_p99", "transmission p99, 1 edge", "ms", "lower"),
           ("cloud_p50", "cloud (tail) p50, 1 edge", "ms", "lower"),
           ("roundtrip_p50", "round trip p50 (transmission + cloud + queue), 1 edge", "ms", "lower"),
           ("throughput_1", "throughput, 1 edge", "1/s", "higher"),
           ("throughput_n", "throughput, {edges} edges", "1/s", "higher"))


def _say(message):
    sys.stderr.write("triton-bench: {}\n".format(message))
    sys.stderr.flush()


def bundle_dir(store, split):
    return os.path.join(store, "{}-s{}".format(MODEL, split))


def entry_name(split):
    return "{}-s{}".format(MODEL, split)


def triton_unavailable():
    """Why serve-triton cannot start a server here (None where it can), as serve-triton itself decides."""
    from runtime.cloud import triton_server
    from runtime.errors import UserError
    try:
        server = triton_server.find_server(triton_server.ServeTritonOptions())
    except UserError as exc:
        return str(exc)
    server.cleanup()
    try:
        import tritonclient.grpc  # noqa: F401  (the edge's and this script's client: the triton extra)
    except ImportError as exc:
        return "tritonclient[grpc] is not installed ({}); install the project's triton extra".format(exc)
    return None


# ---------------------------------------------------------------- processes

def start_triton(repo, start_timeout=300):
    """``cli.py serve-triton --repo REPO`` on free loopback ports, seen ready (its log kept; ``stop`` sends
    SIGTERM: serve-triton stops the server and its stubs and exits 0)."""
    return launch.TritonStarted(repo, "--grpc-port", 0, "--http-port", 0, "--metrics-port", 0, "--start-timeout",
                                start_timeout, cwd=REPO, env=ENV)


class Edges(object):
    """``run-edge`` processes, every one killed by ``kill_all`` (the finally of an interrupted run)."""

    def __init__(self):
        self.running = []

    def start(self, argv):
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, universal_newlines=True,
                                cwd=REPO, env=ENV)
        self.running.append(proc)
        return proc

    def wait(self, proc, timeout=900):
        try:
            _, err = proc.communicate(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            self.running.remove(proc)
        if proc.returncode != 0:
            raise RuntimeError("run-edge exited {}: {}".format(proc.returncode, (err or "").strip()[-2000:]))

    def kill_all(self):
        for proc in self.running:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self.running = []


def edge_argv(cloud, store, split, limit, report, *extra):
    return launch.cli_command("run-edge", "--cloud", cloud, "--artifacts", store, "--model", MODEL, "--split", split,
                              "--dataset", "synthetic", "--limit", limit, "--batch-size", 1, "--inflight", 1,
                              "--threads", 1, "--report", report, *extra)


def read_report(path):
    with open(path) as f:
        return json.load(f)


# ---------------------------------------------------------------- setup

def prepare(work, splits, triton_args):
    """Random-weight ONNX bundles for ``splits`` in work/store, and their tails as python-backend entries
    of the Triton repository work/repo (named resnet50-sK, as run-edge expects)."""
    store, repo = os.path.join(work, "store"), os.path.join(work, "repo")
    for split in splits:
        _say("exporting split {} (random weights)".format(split))
        subprocess.run(launch.cli_command("export", "--split", split, "--random-init", "--out", store,
                                          "--formats", "onnx"), check=True, stdout=subprocess.DEVNULL, cwd=REPO)
        _say("export-triton split {} (--platform python{})".format(
            split, "".join(" " + a for a in triton_args)))
        subprocess.run(launch.cli_command("export-triton", bundle_dir(store, split), "--repo", repo,
                                          "--platform", "python", "--backend", "onnx", "--name", entry_name(split),
                                          *triton_args), check=True, stdout=subprocess.DEVNULL, cwd=REPO)
    return store, repo


def check_identical(store, splits, cloud_address, triton_grpc):
    """Per split and server: are its replies to the head's activations (batch 1) bit-identical to the local tail?"""
    import tritonclient.grpc as grpcclient

    from runtime.backends import load_part
    from runtime.bundle.manifest import load_manifest
    from runtime.edge.client import CloudConnection
    from runtime.edge.data import preprocess_batch
    from runtime.wire import codec
    results = []
    images = np.random.RandomState(7).randint(0, 256, size=(CHECK_SAMPLES, 32, 32, 3)).astype(np.uint8)
    triton = grpcclient.InferenceServerClient(triton_grpc)
    try:
        for split in splits:
            manifest = load_manifest(bundle_dir(store, split))
            head = load_part(manifest, "head", "onnx", "cpu")
            tail = load_part(manifest, "tail", "onnx", "cpu")
            x = preprocess_batch(images, manifest["input"]["preprocess"])
            activations = [np.ascontiguousarray(head.run(x[i:i + 1])) for i in range(len(x))]
            expected = [tail.run(a) for a in activations]
            replies = {"serve-cloud": [], "triton": []}
            conn = CloudConnection(cloud_address, timeout=60)
            try:
                conn.hello({"role": "edge", "model": MODEL, "split": split, "bundle_id": manifest.bundle_id})
                for a in activations:
                    frame, _, _ = conn.infer(a)
                    if frame.type != codec.RESULT:
                        raise RuntimeError("serve-cloud answered {} at split {}: {}".format(
                            frame.type, split, frame.meta))
                    replies["serve-cloud"].append(np.array(frame.array))
            finally:
                conn.close()
            for a in activations:
                tensor = grpcclient.InferInput(manifest["boundary"]["name"], list(a.shape), "FP32")
                tensor.set_data_from_numpy(a)
                replies["triton"].append(triton.infer(entry_name(split), [tensor]).as_numpy(
                    manifest["output"]["name"]))
            for cloud in CLOUDS:
                same = all(got is not None and got.dtype == want.dtype and np.array_equal(got, want)
                           for got, want in zip(replies[cloud], expected))
                diff = max(float(np.max(np.abs(got.astype(np.float64) - want))) if got.shape == want.shape
                           else float("inf") for got, want in zip(replies[cloud], expected))
                results.append({"split": split, "cloud": cloud, "samples": len(activations), "identical": same,
                                "max_abs_diff": diff})
                _say("split {}, {}: bit-identical: {}".format(split, cloud, "yes" if same else "no"))
    finally:
        triton.close()
    return results


# ---------------------------------------------------------------- runs

def one_edge(edges, cloud, store, work, split, limit, tag):
    """One run-edge, one request at a time: its figures, and how long its process took to start and warm up."""
    report = os.path.join(work, "{}.json".format(tag))
    started = time.time()
    edges.wait(edges.start(edge_argv(cloud, store, split, limit, report)))
    finished = time.time()
    r = read_report(report)
    figures = {"transmission_p50": r["transmission_ms"]["p50"], "transmission_p99": r["transmission_ms"]["p99"],
               "cloud_p50": r["cloud_ms"]["p50"], "queue_p50": r["queue_ms"]["p50"],
               "roundtrip_p50": r["transmission_ms"]["p50"] + r["cloud_ms"]["p50"] + r["queue_ms"]["p50"],
               "edge_p50": r["edge_ms"]["p50"], "throughput_1": r["throughput_samples_per_s"], "n_1": r["n"]}
    return figures, max(finished - started - r["wall_s"], 0.5)


def many_edges(edges, cloud, store, work, split, limit, count, startup_s, tag):
    """``count`` run-edge processes lined up with --start-at: their aggregate throughput."""
    cores = os.cpu_count() or 1
    # they start at once and share the cores: each needs about what one edge alone needed, count/cores times over
    lead = 3.0 + 1.3 * startup_s * max(count / float(cores), 1.0)
    start_at = time.time() + lead
    reports = [os.path.join(work, "{}-e{}.json".format(tag, i)) for i in range(count)]
    procs = [edges.start(edge_argv(cloud, store, split, limit, reports[i], "--start-at", "{:.3f}".format(start_at),
                                   "--shuffle", "--seed", i)) for i in range(count)]
    for proc in procs:
        edges.wait(proc)
    rs = [read_report(p) for p in reports]
    first = min(r["started_unix"] for r in rs)
    last = max(r["started_unix"] + r["wall_s"] for r in rs)
    late = [i for i, r in enumerate(rs) if r["started_unix"] > start_at + 0.5]
    if late:
        _say("  {} of {} edges were not ready at --start-at (+{:.1f} s lead): their late start is in the "
             "figure".format(len(late), count, lead))
    total = sum(r["n"] for r in rs)
    return {"throughput_n": total / (last - first) if last > first else 0.0,
            "throughput_n_sum": sum(r["throughput_samples_per_s"] for r in rs), "n_n": total,
            "span_n_s": last - first, "late_edges_n": len(late), "lead_n_s": lead,
            "queue_p50_n": float(np.median([r["queue_ms"]["p50"] for r in rs])),
            "cloud_p50_n": float(np.median([r["cloud_ms"]["p50"] for r in rs]))}


def measure(addresses, store, work, splits, limit, repeats, count, edges):
    """Every run: a list of {"repeat", "split", "cloud", figures...}."""
    runs = []
    for repeat in range(repeats):
        order = CLOUDS if repeat % 2 == 0 else CLOUDS[::-1]
        for split in splits:
            for cloud in order:
                tag = "r{}-s{}-{}".format(repeat, split, cloud)
                _say("repeat {}/{}, split {}, {}: 1 edge, {} samples".format(repeat + 1, repeats, split, cloud, limit))
                figures, startup_s = one_edge(edges, addresses[cloud], store, work, split, limit, tag)
                _say("repeat {}/{}, split {}, {}: {} edges at once, {} samples each".format(
                    repeat + 1, repeats, split, cloud, count, limit))
                figures.update(many_edges(edges, addresses[cloud], store, work, split, limit, count, startup_s, tag))
                figures.update(repeat=repeat, split=split, cloud=cloud)
                runs.append(figures)
                _say("  transmission p50 {:.3f} ms, p99 {:.3f} ms; {:.1f} samples/s (1 edge), {:.1f} samples/s "
                     "({} edges)".format(figures["transmission_p50"], figures["transmission_p99"],
                                         figures["throughput_1"], figures["throughput_n"], count))
    return runs


def summarise(runs, splits, count):
    """The table's rows: per split and metric, the medians over the repeats for both clouds and their ratio."""
    rows = []
    for split in splits:
        for key, label, unit, better in METRICS:
            values = {cloud: [r[key] for r in runs if r["split"] == split and r["cloud"] == cloud]
                      for cloud in CLOUDS}
            ours, triton = (float(np.median(values[c])) for c in CLOUDS)
            rows.append({"split": split, "metric": label.format(edges=count), "key": key, "unit": unit,
                         "better": better, "serve_cloud": ours, "triton": triton,
                         "ratio": triton / ours if ours else float("nan"),
                         "serve_cloud_runs": values["serve-cloud"], "triton_runs": values["triton"]})
    return rows


def target_line(rows):
    got = {r["split"]: r for r in rows if r["key"] == "transmission_p50"}
    if 20 not in got:
        return "target (Triton adds <= {} ms to transmission p50 at split 20): not measured, split 20 not in " \
               "--splits".format(TARGET_MS), None
    added = got[20]["triton"] - got[20]["serve_cloud"]
    met = added <= TARGET_MS
    return ("target: Triton adds at most {} ms to transmission p50 at split 20 on loopback: {:+.3f} ms "
            "({:.3f} vs {:.3f} ms): {}".format(TARGET_MS, added, got[20]["triton"], got[20]["serve_cloud"],
                                               "met" if met else "NOT met"), {"added_ms": added, "met": met})


# ---------------------------------------------------------------- output

def format_table(rows, repeats):
    lines = ["| split | metric (median of {}) | serve-cloud | Triton | Triton / serve-cloud |".format(repeats),
             "|---:|---|---:|---:|---:|"]
    for r in rows:
        lines.append("| {} | {} | {:.3f} {} | {:.3f} {} | {:.2f}x |".format(
            r["split"], r["metric"], r["serve_cloud"], r["unit"], r["triton"], r["unit"], r["ratio"]))
    return "\n".join(lines)


def plot(rows, count, path):
    """Left: transmission p50 / p99 per split; middle: round trip p50; right: throughput, 1 and N edges."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    splits = sorted({r["split"] for r in rows})
    get = {(r["split"], r["key"]): r for r in rows}
    panels = ((("transmission_p50", "p50"), ("transmission_p99", "p99")),
              (("roundtrip_p50", "p50"),),
              (("throughput_1", "1 edge"), ("throughput_n", "{} edges".format(count))))
    titles = ("transmission, 1 edge (ms)", "round trip, 1 edge (ms)", "throughput (samples/s)")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    colors = {"serve-cloud": "tab:blue", "triton": "tab:orange"}
    for ax, panel, title in zip(axes, panels, titles):
        groups = [(s, key, label) for s in splits for key, label in panel]
        for i, cloud in enumerate(CLOUDS):
            values = [get[(s, key)]["serve_cloud" if cloud == "serve-cloud" else "triton"] for s, key, _ in groups]
            ax.bar([j + (i - 0.5) * 0.38 for j in range(len(groups))], values, width=0.38, color=colors[cloud],
                   label="serve-cloud" if cloud == "serve-cloud" else "Triton (python backend)")
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(["split {}\n{}".format(s, label) for s, _, label in groups], fontsize=8)
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle("serve-cloud and Triton, same ONNX tail on the CPU, loopback (medians)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(out, rows, result):
    os.makedirs(out, exist_ok=True)
    fields = ["split", "metric", "unit", "serve_cloud", "triton", "ratio"]
    with open(os.path.join(out, "triton.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(out, "triton.json"), "w") as f:
        json.dump(result, f, indent=1)
    plot(rows, result["edges"], os.path.join(out, "triton.png"))
    _say("wrote triton.csv, triton.json and triton.png in {}".format(out))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--splits", default="3,20", help="comma-separated ResNet-50 split points")
    parser.add_argument("--limit", type=int, default=60, help="samples per edge run (each of the N edges too)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of everything; the table gives medians")
    parser.add_argument("--edges", type=int, default=8, help="concurrent edges for the throughput figure")
    parser.add_argument("--out", help="write triton.csv, triton.json and triton.png here")
    parser.add_argument("--server-arg", action="append", default=[], help="an argument added to serve-cloud's "
                        "(repeat for more; use --server-arg=--max-batch --server-arg=8)")
    parser.add_argument("--triton-arg", action="append", default=[], help="an argument added to export-triton's "
                        "(repeat for more; e.g. --triton-arg=--max-queue-delay-us --triton-arg=0)")
    args = parser.parse_args()
    try:
        splits = [int(s) for s in args.splits.split(",") if s.strip()]
    except ValueError:
        sys.exit("triton-bench: --splits must be comma-separated integers, not {!r}".format(args.splits))
    if not splits or args.limit < 1 or args.repeats < 1 or args.edges < 1:
        sys.exit("triton-bench: need at least one split, and --limit, --repeats and --edges of at least 1")
    reason = triton_unavailable()
    if reason:
        _say("Triton cannot run here: {}".format(reason))
        sys.exit(2)
    work = tempfile.mkdtemp(prefix="edgesplit-triton-bench-")
    edges = Edges()
    servers = []
    try:
        store, repo = prepare(work, splits, args.triton_arg)
        _say("starting serve-cloud{}".format("".join(" " + a for a in args.server_arg)))
        cloud = launch.serve_cloud("--port", 0, "--artifacts", store, *args.server_arg, env=ENV, cwd=REPO)
        servers.append(("serve-cloud", cloud))
        _say("starting serve-triton")
        triton = start_triton(repo)
        servers.append(("serve-triton", triton))
        addresses = {"serve-cloud": cloud.address, "triton": "grpc://" + triton.grpc}
        _say("serve-cloud on {}, Triton on grpc://{}".format(cloud.address, triton.grpc))
        identical = check_identical(store, splits, cloud.address, triton.grpc)
        runs = measure(addresses, store, work, splits, args.limit, args.repeats, args.edges, edges)
    finally:
        edges.kill_all()
        for name, server in reversed(servers):
            code = server.stop()
            if code != 0:
                _say("{} exited {}: {}".format(name, code, server.log_text().strip()[-1500:]))
        shutil.rmtree(work, ignore_errors=True)
    rows = summarise(runs, splits, args.edges)
    print(format_table(rows, args.repeats))
    print()
    for r in identical:
        print("split {}, {}: bit-identical: {} ({} samples, batch 1; max |diff| {:.3g})".format(
            r["split"], r["cloud"], "yes" if r["identical"] else "no", r["samples"], r["max_abs_diff"]))
    line, target = target_line(rows)
    print(line)
    print("({} edges: throughput = all samples / (last finish - first release); one edge: --inflight 1, "
          "--batch-size 1; round trip for serve-cloud = the sum of the three p50s; against Triton transmission = "
          "round trip - the run's average cloud and queue, so at a split with a long tail its p99 also carries "
          "the tail's own variation: compare the round trips)".format(args.edges))
    sys.stdout.flush()
    if args.out:
        result = {"splits": splits, "limit": args.limit, "repeats": args.repeats, "edges": args.edges,
                  "server_args": args.server_arg, "triton_args": args.triton_arg, "cores": os.cpu_count(),
                  "table": rows, "bit_identical": identical, "target": dict(target or {}, line=line), "runs": runs}
        write_outputs(args.out, rows, result)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped like Ctrl-C: the finally stops everything
    try:
        main()
    except KeyboardInterrupt:
        _say("interrupted; everything it started is stopped")
        sys.exit(130)
