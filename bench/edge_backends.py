#!/usr/bin/env python3
"""Edge compute per sample: the TorchScript and onnxruntime backends, on the Jetson's stack and on the cloud's.

One run measures the head of each split with each backend (``runtime/backends``, loaded with ``load_part`` as
run-edge loads it, on the CPU) in a subprocess of each interpreter:

* ``jp46``: JetPack 4.6's stack, Python 3.6 + torch 1.10 + onnxruntime 1.10 (``make torch110-env`` makes it in
  ``.venv-jp46-torch``; ``--jp46-env`` or ``$EDGESPLIT_JP46_ENV`` names another; skipped, saying why, where it
  lacks torch);
* ``cloud``: this interpreter, with its torch and onnxruntime;

quiet and under load (``--busy N`` processes each burning a core, default one per core), and prints a Markdown
table of medians and p99s with each backend's ratio against onnxruntime on the same interpreter, split and load,
and writes ``edge_backends.png``, ``.json`` and ``.md`` into ``--out``::

    python bench/edge_backends.py                          # splits 3 and 20, 3 rounds (about 10 minutes)
    python bench/edge_backends.py --splits 20 --rounds 1 --loads busy --variants onnx,torchscript-before

Variants (``--variants``): ``onnx``; ``torchscript`` (the backend as it is); ``torchscript-before`` (the way it
loaded modules before it prepared them for inference: ``EDGESPLIT_TORCHSCRIPT_OPTIMIZE=0``); ``torchscript-spin``
(as it is, but with OpenMP's default spin-waiting: ``EDGESPLIT_ORT_SPIN=1``).  Every round runs each variant once
per interpreter, split and load, in an order that turns from round to round; a figure is the median over rounds of
each run's median, and p99 is over every measured sample of those runs.  Each run also reports its process's CPU
time and involuntary context switches per sample, and how busy the whole machine was (``/proc/stat``), so a run
that shared the machine with other work shows it.

Python 3.6 syntax: the worker (``--worker``) runs under the JetPack 4.6 interpreter.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CLI = os.path.join(REPO, "cli.py")

VARIANTS = {  # name: (backend, environment)
    "onnx": ("onnx", {}),
    "torchscript": ("torchscript", {}),
    "torchscript-before": ("torchscript", {"EDGESPLIT_TORCHSCRIPT_OPTIMIZE": "0"}),
    "torchscript-spin": ("torchscript", {"EDGESPLIT_ORT_SPIN": "1"}),
}
# what the parent takes out of the workers' environment, so that each variant is the backend's own choices
CLEARED = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "EDGESPLIT_TORCHSCRIPT_OPTIMIZE",
           "EDGESPLIT_ORT_SPIN")
PARITY_BATCH = 8


def _say(message):
    sys.stderr.write("edge-backends: {}\n".format(message))
    sys.stderr.flush()


# ---------------------------------------------------------------- the worker (any interpreter, Python 3.6+)

def _machine_jiffies():
    """(busy, total) jiffies of every CPU since boot, or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def worker(args):
    import resource

    import numpy as np
    sys.path.insert(0, REPO)
    from runtime.backends import load_part
    from runtime.bundle.manifest import load_manifest
    manifest = load_manifest(args.bundle)
    shape = [args.batch] + list(manifest["input"]["shape"][1:])
    rng = np.random.RandomState(0)
    inputs = [rng.standard_normal(shape).astype(np.float32) for _ in range(4)]
    start = time.perf_counter()
    head = load_part(manifest, "head", args.backend, "cpu", args.threads)
    load_s = time.perf_counter() - start

    def timed(x):
        t0 = time.perf_counter()
        head.run(x)
        return (time.perf_counter() - t0) * 1000.0 / args.batch

    warmup = [timed(inputs[i % len(inputs)]) for i in range(args.warmup)]
    usage0, jiffies0, wall0 = resource.getrusage(resource.RUSAGE_SELF), _machine_jiffies(), time.perf_counter()
    ms = [timed(inputs[i % len(inputs)]) for i in range(args.runs)]
    usage1, jiffies1, wall1 = resource.getrusage(resource.RUSAGE_SELF), _machine_jiffies(), time.perf_counter()
    samples = args.runs * args.batch
    own = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
    machine = None
    if jiffies0 and jiffies1 and jiffies1[1] > jiffies0[1]:  # busy share of all CPUs, in cores
        machine = (jiffies1[0] - jiffies0[0]) / float(jiffies1[1] - jiffies0[1]) * (os.cpu_count() or 1)
    parity = np.random.RandomState(1).standard_normal([PARITY_BATCH] + shape[1:]).astype(np.float32)
    np.save(args.output, np.asarray(head.run(parity)))
    versions = {"python": "{}.{}.{}".format(*sys.version_info[:3])}
    for name in ("torch", "onnxruntime", "numpy"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    threads = args.threads
    if args.backend == "torchscript":
        threads = __import__("torch").get_num_threads()
    result = {"ms": ms, "warmup_ms": warmup, "load_s": load_s, "provider": head.provider, "threads": threads,
              "optimised": getattr(head, "optimised", None), "versions": versions,
              "cpu_ms_per_sample": 1000.0 * own / samples,
              "involuntary_switches_per_sample": (usage1.ru_nivcsw - usage0.ru_nivcsw) / float(samples),
              "own_cores": own / (wall1 - wall0), "machine_busy_cores": machine}
    with open(args.json, "w") as f:
        json.dump(result, f)


# ---------------------------------------------------------------- the parent (the cloud's interpreter)

def jp46_python(env_dir):
    """(the JetPack 4.6 interpreter, None) where it imports torch and onnxruntime, else (None, why not)."""
    env_dir = env_dir if os.path.isabs(env_dir) else os.path.join(REPO, env_dir)
    python = os.path.join(env_dir, "bin", "python")
    if not os.path.exists(python):
        why = "no {} (make torch110-env)".format(os.path.relpath(python, REPO))
        unavailable = os.path.join(env_dir, "UNAVAILABLE")
        if os.path.isfile(unavailable):
            with open(unavailable) as f:
                why = f.read().strip() or why
        return None, why
    proc = subprocess.run([python, "-c", "import torch, onnxruntime"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return None, "{} cannot import torch and onnxruntime ({})".format(
            os.path.relpath(python, REPO), lines[-1] if lines else "exit {}".format(proc.returncode))
    return python, None


def bundles(store, model, splits):
    """{split: bundle directory}, exporting the seed's ResNet-50 (random weights) at the splits missing."""
    out = {}
    for split in splits:
        directory = os.path.join(store, "{}-s{}".format(model, split))
        if not os.path.isfile(os.path.join(directory, "manifest.json")):
            if model != "resnet50":
                sys.exit("edge-backends: no bundle {} (this script exports only resnet50)".format(directory))
            _say("exporting split {} (random weights, ONNX and TorchScript)".format(split))
            subprocess.run([sys.executable, CLI, "export", "--split", str(split), "--random-init", "--out", store,
                            "--formats", "onnx,torchscript"], check=True, stdout=subprocess.DEVNULL, cwd=REPO)
        out[split] = directory
    return out


def variant_of(name):
    """(backend, environment) of a variant: a name of VARIANTS, then any ``+NAME=VALUE`` to set for it, e.g.
    ``torchscript+GOMP_SPINCOUNT=2000``; None for an unknown one."""
    base, _, rest = name.partition("+")
    if base not in VARIANTS or any("=" not in item for item in rest.split("+") if rest):
        return None
    backend, extra = VARIANTS[base]
    env = dict(extra)
    env.update(item.split("=", 1) for item in rest.split("+") if rest)
    return backend, env


def run_worker(python, bundle, variant, args, work, name):
    backend, extra = variant_of(variant)
    env = dict((k, v) for k, v in os.environ.items() if k not in CLEARED)
    env.update(extra)
    env.update(PYTHONUNBUFFERED="1", PYTHONPATH=REPO)
    report, output = os.path.join(work, name + ".json"), os.path.join(work, name + ".npy")
    argv = [python, os.path.abspath(__file__), "--worker", "--bundle", bundle, "--backend", backend,
            "--threads", str(args.threads), "--batch", str(args.batch), "--runs", str(args.runs),
            "--warmup", str(args.warmup), "--json", report, "--output", output]
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, env=env,
                          cwd=REPO, timeout=args.timeout)
    if proc.returncode != 0:
        raise RuntimeError("worker {} failed: {}".format(name, proc.stderr.strip()[-2000:]))
    with open(report) as f:
        result = json.load(f)
    result["output"] = output
    return result


def measure(args, pythons, dirs, work):
    """{(interpreter, split, load, variant): [worker results, one per round]}."""
    import numpy as np
    sys.path.insert(0, HERE)
    import contention  # its busy loops (this module's worker runs on Python 3.6 and imports none of it)
    loads = [l for l in args.loads.split(",") if l]
    variants = [v for v in args.variants.split(",") if v]
    total = args.rounds * len(loads) * len(dirs) * len(pythons) * len(variants)
    runs, done = {}, 0
    for rnd in range(args.rounds):
        for load in loads:
            with contention.busy_loops(args.busy if load == "busy" else 0):
                for split in sorted(dirs):
                    for label, python in pythons:
                        turn = rnd % len(variants)
                        for variant in variants[turn:] + variants[:turn]:
                            done += 1
                            name = "{}-s{}-{}-v{}-r{}".format(label, split, load, variants.index(variant), rnd)
                            r = run_worker(python, dirs[split], variant, args, work, name)
                            runs.setdefault((label, split, load, variant), []).append(r)
                            _say("[{}/{}] round {}/{}, {}, split {}, {}, {}: median {:.2f} ms, p99 {:.2f} ms, "
                                 "CPU {:.1f} ms/sample, machine busy {} cores".format(
                                     done, total, rnd + 1, args.rounds, load_label(load, args.busy), split, label,
                                     variant, float(np.median(r["ms"])), float(np.percentile(r["ms"], 99)),
                                     r["cpu_ms_per_sample"], "?" if r["machine_busy_cores"] is None
                                     else "{:.2f}".format(r["machine_busy_cores"])))
    return runs


def load_label(load, busy):
    return "quiet" if load == "quiet" else "{} busy loops".format(busy)


def summarise(runs):
    """One figure per (interpreter, split, load, variant): medians over rounds, p99 over every sample."""
    import numpy as np
    out = {}
    for key, rs in runs.items():
        pooled = [t for r in rs for t in r["ms"]]
        out[key] = {"median_ms": float(np.median([np.median(r["ms"]) for r in rs])),
                    "p99_ms": float(np.percentile(pooled, 99)), "max_ms": float(max(pooled)),
                    "round_medians_ms": [float(np.median(r["ms"])) for r in rs],
                    "cpu_ms_per_sample": float(np.median([r["cpu_ms_per_sample"] for r in rs])),
                    "involuntary_switches_per_sample": float(np.median([r["involuntary_switches_per_sample"]
                                                                        for r in rs])),
                    "machine_busy_cores": [r["machine_busy_cores"] for r in rs],
                    "load_s": float(np.median([r["load_s"] for r in rs])),
                    "first_call_ms": float(np.median([r["warmup_ms"][0] for r in rs])) if rs[0]["warmup_ms"] else None,
                    "optimised": rs[0]["optimised"], "threads": rs[0]["threads"], "versions": rs[0]["versions"]}
    return out


def parity(runs):
    """{(interpreter, split): {variant: max |output - onnx's| / max |onnx's|}} on the same inputs."""
    import numpy as np
    out = {}
    for (label, split, load, variant), rs in runs.items():
        ref = runs.get((label, split, load, "onnx"))
        if variant == "onnx" or not ref:
            continue
        a, b = np.load(ref[0]["output"]), np.load(rs[0]["output"])
        out.setdefault((label, split), {})[variant] = float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30))
    return out


def describe(versions):
    parts = ["Python " + ".".join(versions["python"].split(".")[:2])]
    for name in ("torch", "onnxruntime"):
        if name in versions:
            parts.append("{} {}".format(name, versions[name].split("+")[0]))
    return ", ".join(parts)


def format_tables(summary, diffs, variants, busy):
    keys = sorted(set(k[:3] for k in summary), key=lambda k: (k[0] != "jp46", k[1], k[2] != "quiet"))
    head = ["interpreter", "split", "load"] + ["{} ms p50 / p99{}".format(v, "" if v == "onnx" else " (x onnx)")
                                                for v in variants]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---|" + "---:|" * len(variants)]
    cpu = ["| interpreter | split | load | " + " | ".join("{} CPU ms / invol. switches per sample".format(v)
                                                          for v in variants) + " | machine busy (cores) |",
           "|---|---:|---|" + "---:|" * (len(variants) + 1)]
    for label, split, load in keys:
        figures = [summary.get((label, split, load, v)) for v in variants]
        known = [f for f in figures if f]
        interp = describe(known[0]["versions"])
        onnx = summary.get((label, split, load, "onnx"))
        cells, cpu_cells = [], []
        for v, f in zip(variants, figures):
            if f is None:
                cells.append("-")
                cpu_cells.append("-")
                continue
            ratio = "" if v == "onnx" or not onnx else " ({:.2f}x)".format(f["median_ms"] / onnx["median_ms"])
            cells.append("{:.2f} / {:.2f}{}".format(f["median_ms"], f["p99_ms"], ratio))
            cpu_cells.append("{:.1f} / {:.2f}".format(f["cpu_ms_per_sample"], f["involuntary_switches_per_sample"]))
        busy_cores = sorted(c for f in known for c in f["machine_busy_cores"] if c is not None)
        machine = "{:.1f}-{:.1f}".format(busy_cores[0], busy_cores[-1]) if busy_cores else "?"
        row = [interp, str(split), load_label(load, busy)]
        lines.append("| " + " | ".join(row + cells) + " |")
        cpu.append("| " + " | ".join(row + cpu_cells + [machine]) + " |")
    notes = []
    for (label, split), by_variant in sorted(diffs.items()):
        notes.append("{} split {}: max |head output - onnx's| / max |onnx's|: {}".format(
            label, split, ", ".join("{} {:.1e}".format(v, d) for v, d in sorted(by_variant.items()))))
    return "\n".join(lines), "\n".join(cpu), notes


def plot(summary, variants, busy, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = sorted(set(k[:3] for k in summary), key=lambda k: (k[0] != "jp46", k[1], k[2] != "quiet"))
    fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(keys)), 4.8))
    width = 0.8 / len(variants)
    for i, v in enumerate(variants):
        xs = [j + (i - (len(variants) - 1) / 2.0) * width for j in range(len(keys))]
        med = [summary.get(k + (v,), {}).get("median_ms", 0) for k in keys]
        p99 = [summary.get(k + (v,), {}).get("p99_ms", 0) for k in keys]
        bars = ax.bar(xs, med, width=width, label=v)
        ax.scatter(xs, p99, marker="_", s=200, color=bars.patches[0].get_facecolor() if bars.patches else None)
    ax.set_xticks(range(len(keys)))
    versions = dict((k[:3], f["versions"]) for k, f in summary.items())
    ax.set_xticklabels(["{}\nsplit {}, {}".format(describe(versions[k]).replace(", ", "\n"), k[1],
                                                  load_label(k[2], busy)) for k in keys], fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("edge compute per sample (ms, log): bar median, dash p99")
    ax.set_title("head on the CPU, batch 1: TorchScript vs onnxruntime, per interpreter")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bundle", help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "edgesplit-edge-backends"))
    parser.add_argument("--store", help="bundles (default: OUT/store; the seed's ResNet-50 is exported if missing)")
    parser.add_argument("--model", default="resnet50", help="model id of the bundles")
    parser.add_argument("--splits", default="3,20")
    parser.add_argument("--interpreters", default="jp46,cloud", help="jp46 and/or cloud")
    parser.add_argument("--jp46-env", default=os.environ.get("EDGESPLIT_JP46_ENV", ".venv-jp46-torch"),
                        help="the JetPack 4.6 environment with torch (relative to the repository)")
    parser.add_argument("--variants", default="onnx,torchscript,torchscript-before",
                        help="comma-separated: " + ", ".join(sorted(VARIANTS)) + ", each with any +NAME=VALUE")
    parser.add_argument("--loads", default="quiet,busy", help="quiet and/or busy")
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 2, help="busy loops under load")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=100, help="measured calls per run")
    parser.add_argument("--warmup", type=int, default=5, help="calls before measuring (the first settles torch)")
    parser.add_argument("--threads", type=int, default=0, help="compute threads (0: each library's default)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per worker run")
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if variant_of(v) is None] + [l for l in args.loads.split(",")
                                                            if l not in ("quiet", "busy")]
    if unknown:
        sys.exit("edge-backends: unknown variant or load: {}".format(", ".join(unknown)))
    work = os.path.join(args.out, "work")
    os.makedirs(work, exist_ok=True)
    pythons, notes = [], []
    for label in [i for i in args.interpreters.split(",") if i]:
        if label == "cloud":
            pythons.append(("cloud", sys.executable))
        elif label == "jp46":
            python, why = jp46_python(args.jp46_env)
            if python:
                pythons.append(("jp46", python))
            else:
                notes.append("no JetPack 4.6 rows: " + why)
                _say(notes[-1])
        else:
            sys.exit("edge-backends: unknown interpreter {!r} (jp46, cloud)".format(label))
    if not pythons:
        sys.exit("edge-backends: no interpreter to run")
    cleared = [k for k in CLEARED if k in os.environ]
    if cleared:
        notes.append("cleared from the workers' environment: " + ", ".join(cleared))
    dirs = bundles(args.store or os.path.join(args.out, "store"), args.model, [int(s) for s in args.splits.split(",")])
    started = time.time()
    load_before = os.getloadavg()
    runs = measure(args, pythons, dirs, work)
    summary, diffs = summarise(runs), parity(runs)
    compute, cpu, parity_notes = format_tables(summary, diffs, variants, args.busy)
    notes = parity_notes + notes + ["{} rounds of {} calls after {} warm-up calls, batch {}, threads {}; load average "
                                    "{:.2f} before, {:.2f} after; {:.0f} s".format(
                                        args.rounds, args.runs, args.warmup, args.batch, args.threads or "default",
                                        load_before[0], os.getloadavg()[0], time.time() - started)]
    text = compute + "\n\n" + cpu + "\n\n" + "\n".join("* " + n for n in notes)
    print(text)
    with open(os.path.join(args.out, "edge_backends.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.out, "edge_backends.json"), "w") as f:
        json.dump({"args": vars(args), "notes": notes, "figures": [
            dict(zip(("interpreter", "split", "load", "variant"), k), **v) for k, v in sorted(summary.items())],
            "parity": [{"interpreter": k[0], "split": k[1], "max_rel_diff": v} for k, v in sorted(diffs.items())]},
            f, indent=1)
    try:
        plot(summary, variants, args.busy, os.path.join(args.out, "edge_backends.png"))
    except ImportError as exc:
        _say("no chart ({})".format(exc))
    _say("wrote {}".format(os.path.join(args.out, "edge_backends.{md,json,png}")))


if __name__ == "__main__":
    main()
