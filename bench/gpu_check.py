#!/usr/bin/env python3
"""The GPU check (issue #6, item 7): tail latency on CUDA vs CPU, and dynamic batching on the GPU.

Runs in a few minutes on one GPU; prints two Markdown tables and writes gpu.json::

    python bench/gpu_check.py --out /tmp/gpu                 # on the GPU host
    python bench/gpu_check.py --device cpu --seconds 3       # the same steps on a CPU (to try the script)

1. Tail latency, batch 1, TorchScript, at splits 3, 10 and 16: median of 200 runs
   (after 20 warm-up runs) on the chosen device and on the CPU.
2. Dynamic batching: ``serve-cloud --backend torchscript --device cuda`` with and
   without ``--max-batch 16``; 16 concurrent edge streams (threads, one connection
   each, speaking the real protocol) send split-3 activations in a closed loop for
   ``--seconds``; samples/s of each, and the ratio (target >= 8x on an H100).

Random weights; the bundles are exported here first (TorchScript only).
"""
import argparse
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CLI = os.path.join(REPO, "cli.py")
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)


def _say(message):
    sys.stderr.write("gpu-check: {}\n".format(message))
    sys.stderr.flush()


def export(store, splits):
    for split in splits:
        if not os.path.isdir(os.path.join(store, "resnet50-s{}".format(split))):
            _say("exporting split {}".format(split))
            subprocess.run([sys.executable, CLI, "export", "--split", str(split), "--random-init", "--out", store,
                            "--formats", "torchscript"], check=True, stdout=subprocess.DEVNULL, cwd=REPO)


def tail_latency(store, splits, device, runs=200, warmup=20):
    from runtime.backends import load_part
    from runtime.manifest import load_manifest
    rows = []
    for split in splits:
        manifest = load_manifest(os.path.join(store, "resnet50-s{}".format(split)))
        x = np.random.RandomState(0).rand(1, *manifest["boundary"]["shape"][1:]).astype(np.float32)
        row = {"split": split}
        for dev in (device, "cpu") if device != "cpu" else ("cpu",):
            tail = load_part(manifest, "tail", "torchscript", dev)
            for _ in range(warmup):
                tail.run(x)
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                tail.run(x)
                times.append((time.perf_counter() - t0) * 1000.0)
            row[dev] = float(np.median(times))
        rows.append(row)
    return rows


def _stream(address, split, x, stop, counts, index, errors):
    from runtime import protocol as p
    from runtime.edge import CloudConnection
    try:
        conn = CloudConnection(address, timeout=60)
        conn.hello({"role": "edge", "model": "resnet50", "split": split, "bundle_id": None})
        n = 0
        while not stop.is_set():
            frame, _, _ = conn.infer(x)
            if frame.type != p.RESULT or frame.array.shape[0] != x.shape[0]:
                raise RuntimeError("bad reply")
            n += x.shape[0]
        counts[index] = n
        conn.close()
    except Exception as exc:  # reported by the main thread
        errors.append(exc)


def serve_throughput(store, streams, seconds, split, server_args, cpu=None):
    """Samples/s that serve-cloud (started with ``server_args``) answers to ``streams`` closed-loop streams."""
    prefix = ["taskset", "-c", str(cpu)] if cpu is not None else []
    proc = subprocess.Popen(prefix + [sys.executable, CLI, "serve-cloud", "--port", "0", "--artifacts", store]
                            + [str(a) for a in server_args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, cwd=REPO)
    try:
        line = proc.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError("serve-cloud did not start: " + proc.stderr.read())
        address = line.strip().rsplit(" ", 1)[1]
        from runtime.manifest import load_manifest
        shape = load_manifest(os.path.join(store, "resnet50-s{}".format(split)))["boundary"]["shape"][1:]
        x = np.random.RandomState(1).rand(1, *shape).astype(np.float32)
        # warm the tail (first CUDA call, cuDNN autotuning) before timing
        warm_stop, warm_errors = threading.Event(), []
        warm = threading.Thread(target=_stream, args=(address, split, x, warm_stop, [0], 0, warm_errors))
        warm.start()
        time.sleep(min(5.0, seconds))
        warm_stop.set()
        warm.join()
        stop, counts, errors = threading.Event(), [0] * streams, []
        threads = [threading.Thread(target=_stream, args=(address, split, x, stop, counts, i, errors))
                   for i in range(streams)]
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join(120)
        if errors or warm_errors:
            raise RuntimeError("a stream failed: {}".format((errors + warm_errors)[0]))
        return sum(counts) / float(seconds)
    finally:
        proc.terminate()
        proc.wait(60)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="/tmp/edgesplit-gpu")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    store = os.path.join(args.out, "store")
    os.makedirs(store, exist_ok=True)
    export(store, [3, 10, 16])
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            sys.exit("gpu-check: torch sees no CUDA device; run with --device cpu to try the script")
        _say("device: {}".format(torch.cuda.get_device_name(0)))
    latency = tail_latency(store, [3, 10, 16], args.device)
    print("| split | tail ms on {} (median, batch 1) | tail ms on cpu | speed-up |".format(args.device))
    print("|---:|---:|---:|---:|")
    for r in latency:
        print("| {} | {:.3f} | {:.3f} | {:.1f}x |".format(r["split"], r[args.device], r["cpu"],
                                                       r["cpu"] / r[args.device]))
    _say("serving without batching")
    served = ["--backend", "torchscript", "--device", args.device]
    plain = serve_throughput(store, args.streams, args.seconds, 3, served)
    _say("serving with --max-batch {}".format(args.streams))
    batched = serve_throughput(store, args.streams, args.seconds, 3,
                               served + ["--max-batch", args.streams, "--max-delay-ms", 2])
    print()
    print("| {} streams at split 3 on {} | samples/s |".format(args.streams, args.device))
    print("|---|---:|")
    print("| no batching | {:.1f} |".format(plain))
    print("| --max-batch {} --max-delay-ms 2 | {:.1f} |".format(args.streams, batched))
    print("| ratio (target >= 8x on an H100) | {:.2f}x |".format(batched / plain))
    with open(os.path.join(args.out, "gpu.json"), "w") as f:
        json.dump({"device": args.device, "latency": latency, "plain": plain, "batched": batched}, f, indent=1)


if __name__ == "__main__":
    main()
