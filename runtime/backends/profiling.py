"""Compute profiles: the median time of every segment of a ``segments`` bundle.

A profile is measured with the backend, provider and device that will really run
it, at one batch size, after warm-up runs, and kept as JSON keyed by (segments
bundle id, backend, provider, device, batch size, threads), so a Jetson's profile
made once is reused.  Both sides use it: the edge for its head, serve-cloud for its
tails (PROFILE).

Python 3.6 syntax: this module runs on the Jetson.
"""
import hashlib
import json
import os
import time

import numpy as np

from runtime.backends import format_of, load_file
from runtime.errors import UserError

RUNS = 10

WARMUP = 3

METHOD = "chain-median-scaled"  # changes when the way of measuring does, so old cached profiles are not reused


def profile_key(manifest, backend, provider, device, batch_size, threads=0):
    return {"method": METHOD, "segments": manifest.bundle_id, "model": manifest.model_id, "backend": backend, "provider": provider,
            "device": device, "batch_size": batch_size, "threads": threads}


def profile_segments(manifest, backend="onnx", device="auto", batch_size=1, threads=0, runs=RUNS, warmup=WARMUP):
    """Time every segment of a segments bundle here; return the profile (a JSON-able dict).

    The segments run as a chain, each on the previous one's output, and every run
    times each of them: a segment meets the caches as the model's forward pass
    leaves them (timing one small segment over and over would keep its weights hot
    and flatter it).  Each segment's median is then scaled so that the segments add
    up to the *mean* time of a whole chain: stalls that hit only some runs (a CPU
    quota's throttling, another process) are real time the edge will spend, and a
    median per segment would drop them.
    """
    fmt = format_of(backend)
    runners = []
    for seg in manifest["segments"]:
        if fmt not in seg["files"]:
            raise UserError("segments bundle {} has no {} files; re-export with --segments --formats {}".format(
                manifest.bundle_id, fmt, fmt))
        runners.append(load_file(os.path.join(manifest.directory, seg["files"][fmt]["file"]), backend, device,
                                 threads, manifest.directory))
    shape = [batch_size] + manifest["segments"][0]["input"]["shape"][1:]
    x0 = np.random.RandomState(0).standard_normal(shape).astype(np.float32)
    times = [[] for _ in runners]
    totals = []
    for r in range(warmup + runs):
        x = x0
        start = time.perf_counter()
        for i, runner in enumerate(runners):
            t0 = time.perf_counter()
            x = runner.run(x)
            if r >= warmup:
                times[i].append((time.perf_counter() - t0) * 1000.0)
        if r >= warmup:
            totals.append((time.perf_counter() - start) * 1000.0)
    medians = [float(np.median(t)) for t in times]
    scale = float(np.median(totals)) / sum(medians) if medians and sum(medians) > 0 else 1.0
    segment_ms = [m * scale for m in medians]
    provider = runners[0].provider if runners else "none"
    return {"key": profile_key(manifest, backend, provider, device, batch_size, threads), "segment_ms": segment_ms,
            "chain_ms": {"mean": float(np.mean(totals)), "median": float(np.median(totals))},
            "points": manifest["points"], "output_bytes_per_sample": manifest["output"]["bytes_per_sample"],
            "runs": runs, "warmup": warmup, "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}


class ProfileCache(object):
    """Profiles as JSON files under ``root``, one per key."""

    def __init__(self, root):
        self.root = root

    def _path(self, key):
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:20]
        return os.path.join(self.root, "{}.json".format(digest))

    def get(self, key):
        path = self._path(key)
        if os.path.isfile(path):
            profile = read_profile(path)
            if profile.get("key") == key:
                return profile
        return None

    def put(self, profile):
        os.makedirs(self.root, exist_ok=True)
        write_profile(self._path(profile["key"]), profile)


def write_profile(path, profile):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(profile, f, indent=1)
    os.replace(tmp, path)


def read_profile(path):
    try:
        with open(path) as f:
            profile = json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError("cannot read profile {} ({})".format(path, exc))
    if not isinstance(profile, dict) or not isinstance(profile.get("segment_ms"), list) or "points" not in profile:
        raise UserError("{} is not a profile written by `cli.py profile`".format(path))
    return profile
