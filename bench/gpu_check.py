#!/usr/bin/env python3
"""The GPU check (issue #6, item 7): tail latency on CUDA vs CPU, and dynamic batching on the GPU.

Runs in a few minutes on one GPU; prints its Markdown tables and writes gpu.json::

    python bench/gpu_check.py --out /tmp/gpu                 # on the GPU host
    python bench/gpu_check.py --device cpu --seconds 3       # the same steps on a CPU (to try the script)

1. Tail latency, batch 1, TorchScript, at splits 3, 10 and 16: median of 200 runs
   (after 20 warm-up runs) on the chosen device and on the CPU.
   On CUDA also replaying a captured CUDA graph (``serve-cloud --cuda-graphs``).
2. Dynamic batching: ``serve-cloud --backend torchscript --device cuda`` with and
   without ``--max-batch 16`` (and each with ``--cuda-graphs``); 16 concurrent edge
   streams (processes, one connection each, speaking the real protocol) send split-3
   activations in a closed loop for ``--seconds`` after a warm-up; samples/s of each,
   latency p50/p99, and the ratio (target >= 8x on an H100).
3. Triton (``--parts triton``), where a ``tritonserver`` or nvidia-pytriton is there (else one line,
   "triton: skipped (reason)"): split 3's tail as a python-backend entry (``export-triton --platform
   python --backend torchscript --kind gpu --device cuda --max-batch 16``, 2 ms queue delay) under
   ``cli.py serve-triton``, the same 16 closed-loop streams (tritonclient gRPC), samples/s against
   serve-cloud's ``--max-batch 16 --max-delay-ms 2`` from step 2 (measured here if step 2 did not run).

Random weights; the bundles are exported here first (TorchScript only).
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CLI = os.path.join(REPO, "cli.py")
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

from runtime import launch  # noqa: E402


def _say(message):
    sys.stderr.write("gpu-check: {}\n".format(message))
    sys.stderr.flush()


def export(store, splits):
    for split in splits:
        if not os.path.isdir(os.path.join(store, "resnet50-s{}".format(split))):
            _say("exporting split {}".format(split))
            subprocess.run([sys.executable, CLI, "export", "--split", str(split), "--random-init", "--out", store,
                            "--formats", "torchscript"], check=True, stdout=subprocess.DEVNULL, cwd=REPO)


def _median_ms(tail, x, runs, warmup):
    for _ in range(warmup):
        tail.run(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        tail.run(x)
        times.append((time.perf_counter() - t0) * 1000.0)
    return float(np.median(times))


def tail_latency(store, splits, device, runs=200, warmup=20):
    """Median batch-1 tail time (host array in, host array out) per split: on the CPU, on
    ``device``, and on ``device`` replaying a CUDA graph."""
    from runtime.backends import load_part
    from runtime.bundle.manifest import load_manifest
    rows = []
    for split in splits:
        manifest = load_manifest(os.path.join(store, "resnet50-s{}".format(split)))
        x = np.random.RandomState(0).rand(1, *manifest["boundary"]["shape"][1:]).astype(np.float32)
        row = {"split": split, "cpu": _median_ms(load_part(manifest, "tail", "torchscript", "cpu"), x, runs, warmup)}
        if device != "cpu":
            row[device] = _median_ms(load_part(manifest, "tail", "torchscript", device), x, runs, warmup)
            try:
                graphs = load_part(manifest, "tail", "torchscript", device, cuda_graphs=True)
                row["graphs"] = _median_ms(graphs, x, runs, warmup)
                row["graphs_max_diff"] = float(np.abs(graphs.run(x) - load_part(
                    manifest, "tail", "torchscript", "cpu").run(x)).max())
            except Exception as exc:
                row["graphs_error"] = str(exc)[:300]
        if device != "cpu" and split == 3:  # the GPU's own bound for the batching rows below
            x16 = np.repeat(x, 16, axis=0)
            row["batch16"] = _median_ms(load_part(manifest, "tail", "torchscript", device), x16, 50, 10)
            row["batch16_graphs"] = _median_ms(load_part(manifest, "tail", "torchscript", device, cuda_graphs=True),
                                               x16, 50, 10)
        rows.append(row)
        _say("split {}: {}".format(split, row))
    return rows


def _stream(address, split, shape, begin, end, queue):
    """One edge stream in its own process (so 16 streams are not held back by one GIL): send
    split-``split`` activations in a closed loop until ``end`` (time.time()); count the replies
    that arrive between ``begin`` and ``end`` and their latencies."""
    sys.path.insert(0, REPO)
    from runtime.edge.client import CloudConnection
    from runtime.wire import codec
    try:
        x = np.random.RandomState(os.getpid() % 1000).rand(1, *shape).astype(np.float32)
        conn = CloudConnection(address, timeout=120)
        conn.hello({"role": "edge", "model": "resnet50", "split": split, "bundle_id": None})
        n, latencies = 0, []
        while True:
            t0 = time.time()
            if t0 >= end:
                break
            frame, _, _ = conn.infer(x)
            t1 = time.time()
            if frame.type != codec.RESULT or frame.array.shape[0] != 1:
                raise RuntimeError("bad reply: {}".format(frame.meta))
            if t0 >= begin:
                n += 1
                latencies.append((t1 - t0) * 1000.0)
        conn.close()
        queue.put((n, latencies, None))
    except Exception as exc:  # reported by the parent
        queue.put((0, [], "{}: {}".format(type(exc).__name__, exc)))


def serve_throughput(store, streams, seconds, split, server_args, cpu=None, warmup=5.0, details=None):
    """Samples/s that serve-cloud (started with ``server_args``) answers to ``streams`` closed-loop
    streams, each a process of its own; the first ``warmup`` seconds (first CUDA calls, graph
    captures) are not counted.  ``details``, a dict, receives the latency p50/p99."""
    prefix = ["taskset", "-c", str(cpu)] if cpu is not None else []
    server = launch.Started(prefix + launch.cli_command("serve-cloud", "--port", "0", "--artifacts", store,
                                                        *server_args), cwd=REPO)
    try:
        address = server.address
        from runtime.bundle.manifest import load_manifest
        shape = load_manifest(os.path.join(store, "resnet50-s{}".format(split)))["boundary"]["shape"][1:]
        results = _run_streams(_stream, (address, split, shape), streams, seconds, warmup, "")
        if details is not None:
            details.update(_percentiles(results))
        return sum(r[0] for r in results) / float(seconds)
    finally:
        server.stop()


def _run_streams(target, args, streams, seconds, warmup, what):
    """``streams`` spawned processes, each ``target(*args, begin, end, queue)`` from ``begin`` (their start, spawn
    and imports, and ``warmup`` are not counted) to ``end``; returns what each put on the queue, (samples,
    latencies, error or None), raising if one died, hung or failed."""
    import multiprocessing
    import queue as queue_module
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    begin = time.time() + 3.0 + warmup
    end = begin + seconds
    workers = [context.Process(target=target, args=tuple(args) + (begin, end, queue)) for _ in range(streams)]
    for w in workers:
        w.start()
    results = []
    while len(results) < streams:
        try:
            results.append(queue.get(timeout=1.0))
        except queue_module.Empty:
            dead = [w for w in workers if w.exitcode not in (None, 0)]
            if dead or time.time() > end + 180:
                raise RuntimeError("a {}stream process {} (exit code {})".format(
                    what, "died" if dead else "hung", dead[0].exitcode if dead else None))
    for w in workers:
        w.join(30)
    failed = [r[2] for r in results if r[2]]
    if failed:
        raise RuntimeError("{} of {} {}streams failed: {}".format(len(failed), streams, what, failed[0]))
    return results


def _percentiles(results):
    latencies = [t for r in results for t in r[1]]
    return {"p50_ms": float(np.percentile(latencies, 50)) if latencies else None,
            "p99_ms": float(np.percentile(latencies, 99)) if latencies else None}


def _triton_unavailable():
    """Why serve-triton cannot start a Triton server here (None where it can), as serve-triton decides."""
    from runtime.cloud import triton_server
    from runtime.errors import UserError
    try:
        triton_server.find_server(triton_server.ServeTritonOptions()).cleanup()
        import tritonclient.grpc  # noqa: F401
    except (UserError, ImportError) as exc:
        return str(exc).splitlines()[0][:200]
    return None


def _triton_stream(url, model, names, shape, begin, end, queue):
    """One stream to Triton in its own process, as ``_stream`` is to serve-cloud (tritonclient gRPC, batch 1)."""
    try:
        import tritonclient.grpc as grpcclient
        x = np.random.RandomState(os.getpid() % 1000).rand(1, *shape).astype(np.float32)
        client = grpcclient.InferenceServerClient(url)
        n, latencies = 0, []
        while True:
            t0 = time.time()
            if t0 >= end:
                break
            tensor = grpcclient.InferInput(names[0], list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            out = client.infer(model, [tensor]).as_numpy(names[1])
            t1 = time.time()
            if out is None or out.shape[0] != 1:
                raise RuntimeError("bad reply: {}".format(None if out is None else out.shape))
            if t0 >= begin:
                n += 1
                latencies.append((t1 - t0) * 1000.0)
        client.close()
        queue.put((n, latencies, None))
    except Exception as exc:  # reported by the parent
        queue.put((0, [], "{}: {}".format(type(exc).__name__, exc)))


def triton_throughput(store, repo, streams, seconds, device, warmup=5.0):
    """Samples/s and latency p50/p99 of ``streams`` closed-loop gRPC streams against Triton serving split 3;
    Triton's log goes to REPO.log."""
    from runtime.bundle.manifest import load_manifest
    manifest = load_manifest(os.path.join(store, "resnet50-s3"))
    kind = ["--kind", "gpu", "--device", "cuda"] if device == "cuda" else ["--kind", "cpu", "--device", "cpu"]
    subprocess.run(launch.cli_command("export-triton", os.path.join(store, "resnet50-s3"), "--repo", repo,
                                      "--platform", "python", "--backend", "torchscript", "--name", "resnet50-s3",
                                      "--max-batch", streams, "--max-queue-delay-us", 2000, *kind),
                   check=True, stdout=subprocess.DEVNULL, cwd=REPO)
    triton = launch.TritonStarted(repo, "--grpc-port", 0, "--http-port", 0, "--metrics-port", 0,
                                  "--start-timeout", 600, cwd=REPO)
    try:
        names = (manifest["boundary"]["name"], manifest["output"]["name"])
        results = _run_streams(_triton_stream, (triton.grpc, "resnet50-s3", names, manifest["boundary"]["shape"][1:]),
                               streams, seconds, warmup, "Triton ")
        return dict(_percentiles(results), samples_per_s=sum(r[0] for r in results) / float(seconds))
    finally:
        triton.stop()
        with open(repo.rstrip(os.sep) + ".log", "w") as f:
            f.write(triton.log_text())


def check_triton(args, store, result, served, batch):
    """Step 3: Triton's python backend against serve-cloud --max-batch, or one line saying why it is skipped."""
    reason = _triton_unavailable()
    if reason:
        print("\ntriton: skipped ({})".format(reason))
        result["triton"] = {"skipped": reason}
        return
    name = "--max-batch {} --max-delay-ms 2".format(args.streams)
    ours = next((d for d in result.get("serve", []) if d["config"] == name and "samples_per_s" in d), None)
    if ours is None:
        _say("serving: {} (serve-cloud, for Triton's comparison)".format(name))
        ours = {"config": name}
        try:
            ours["samples_per_s"] = serve_throughput(store, args.streams, args.seconds, 3, served + batch,
                                                     details=ours)
        except Exception as exc:
            print("\ntriton: not compared (serve-cloud {} failed: {})".format(name, str(exc)[:300]))
            result["triton"] = {"error": "serve-cloud: " + str(exc)[:500]}
            return
    _say("serving: Triton, python backend, TorchScript on {}".format(args.device))
    try:
        got = triton_throughput(store, os.path.join(args.out, "triton-repo"), args.streams, args.seconds, args.device)
    except Exception as exc:
        print("\ntriton: failed ({})".format(str(exc)[:300]))
        result["triton"] = {"error": str(exc)[:500]}
        return
    result["triton"] = dict(got, serve_cloud=ours)
    print("\n| {0} streams at split 3 on {1}, batching up to {0} | samples/s | ratio to serve-cloud | p50 ms | p99 ms |"
          .format(args.streams, args.device))
    print("|---|---:|---:|---:|---:|")
    print("| serve-cloud {} | {:.1f} | 1.00x | {:.2f} | {:.2f} |".format(name, ours["samples_per_s"], ours["p50_ms"],
                                                                       ours["p99_ms"]))
    print("| Triton python backend, --max-batch {}, 2 ms queue delay | {:.1f} | {:.2f}x | {:.2f} | {:.2f} |".format(
        args.streams, got["samples_per_s"], got["samples_per_s"] / ours["samples_per_s"], got["p50_ms"],
        got["p99_ms"]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="/tmp/edgesplit-gpu")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--parts", default="latency,serve,triton",
                        help="Which checks to run (comma-separated: latency, serve, triton).")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    store = os.path.join(args.out, "store")
    os.makedirs(store, exist_ok=True)
    result = {"device": args.device}
    out_json = os.path.join(args.out, "gpu.json")

    def save():
        with open(out_json, "w") as f:
            json.dump(result, f, indent=1)

    export(store, [3, 10, 16] if "latency" in parts else [3])
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            sys.exit("gpu-check: torch sees no CUDA device; run with --device cpu to try the script")
        result["gpu"] = torch.cuda.get_device_name(0)
        result["torch"] = torch.__version__
        _say("device: {}, torch {}".format(result["gpu"], result["torch"]))
    latency = result["latency"] = tail_latency(store, [3, 10, 16], args.device) if "latency" in parts else []
    save()
    print("| split | tail ms on cpu | on {0} | on {0}, CUDA graph | cpu / {0} | cpu / graph |".format(args.device))
    print("|---:|---:|---:|---:|---:|---:|")
    for r in latency:
        dev, graph = r.get(args.device, r["cpu"]), r.get("graphs")
        print("| {} | {:.3f} | {:.3f} | {} | {:.1f}x | {} |".format(
            r["split"], r["cpu"], dev, "{:.3f}".format(graph) if graph else r.get("graphs_error", "-")[:60],
            r["cpu"] / dev, "{:.1f}x".format(r["cpu"] / graph) if graph else "-"))
    for r in latency:
        if "batch16" in r:
            print("\nsplit 3, batch 16 on {}: {:.3f} ms ({:.0f} samples/s), with a CUDA graph {:.3f} ms ({:.0f} samples/s)"
                  .format(args.device, r["batch16"], 16000 / r["batch16"], r["batch16_graphs"],
                          16000 / r["batch16_graphs"]))
    sys.stdout.flush()

    served = ["--backend", "torchscript", "--device", args.device]
    batch = ["--max-batch", args.streams, "--max-delay-ms", 2]
    configs = [("no batching", served), ("--max-batch {} --max-delay-ms 2".format(args.streams), served + batch)]
    if args.device == "cuda":
        configs += [("no batching, --cuda-graphs", served + ["--cuda-graphs"]),
                    ("--max-batch {}, --cuda-graphs".format(args.streams), served + batch + ["--cuda-graphs"])]
    result["serve"] = []
    for name, server_args in configs if "serve" in parts else []:
        _say("serving: {}".format(name))
        details = {"config": name}
        try:
            details["samples_per_s"] = serve_throughput(store, args.streams, args.seconds, 3, server_args,
                                                        details=details)
        except Exception as exc:
            details["error"] = str(exc)[:500]
        result["serve"].append(details)
        _say(str(details))
        save()
    if result["serve"]:
        print_serve(args, result)
    if "triton" in parts:
        check_triton(args, store, result, served, batch)
        save()


def print_serve(args, result):
    plain = result["serve"][0].get("samples_per_s")
    print()
    print("| {} streams at split 3 on {} | samples/s | ratio to no batching | latency p50 ms | p99 ms |".format(
        args.streams, args.device))
    print("|---|---:|---:|---:|---:|")
    for d in result["serve"]:
        if "error" in d:
            print("| {} | failed: {} | | | |".format(d["config"], d["error"][:100]))
            continue
        print("| {} | {:.1f} | {} | {:.2f} | {:.2f} |".format(
            d["config"], d["samples_per_s"], "{:.2f}x".format(d["samples_per_s"] / plain) if plain else "-",
            d["p50_ms"], d["p99_ms"]))
    print("(target: --max-batch {} >= 8x no batching on an H100)".format(args.streams))


if __name__ == "__main__":
    main()
