"""Profiles: measured latency of every segment on this side, and the network between the sides.

A profile is the median time of each segment of a model's ``segments`` bundle
(point ``i`` to ``i + 1``), measured with the backend, provider and device that
will really run it, at one batch size, after warm-up runs.  It is kept as JSON,
keyed by (segments bundle id, backend, provider, device, batch size), so a
Jetson's profile made once is reused.  The network is probed on the live
connection: ECHO frames of a few sizes, fitted as ``t = rtt + bytes / bandwidth``.

Python 3.6 syntax: this module runs on the Jetson.
"""
import collections
import hashlib
import json
import os
import time

import numpy as np

from . import protocol as p
from .backends import load_file
from .errors import UserError

RUNS = 10
WARMUP = 3
PROBE_SIZES = (1024, 64 * 1024, 256 * 1024, 1024 * 1024)
PROBE_REPEATS = 5
PROBE_ENOUGH_MS = 250.0  # a size that takes this long says enough; larger ones would only take longer


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
    fmt = "onnx" if backend == "onnx" else "torchscript"
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


def echo_once(conn, size):
    """Milliseconds for ``size`` bytes to go to the cloud and come back (one ECHO)."""
    payload = np.zeros(size, dtype=np.uint8)
    t0 = time.perf_counter()
    request_id, _ = conn.send(p.ECHO, {}, payload)
    conn.expect(p.RESULT, request_id)
    return (time.perf_counter() - t0) * 1000.0


TRAIN_CHUNK = 16384  # bytes of one ECHO of a probe train


def echo_train(conn, size, cap_ms, chunk=TRAIN_CHUNK, reply_bytes=None):
    """Echo about ``size`` bytes as ECHOs of ``chunk`` bytes; return (bytes sent, bytes back, milliseconds).

    The first chunk goes alone; once it is back, two are kept in flight (enough to keep
    a link busy for a bandwidth sample).  No chunk is sent after ``cap_ms``, so a train
    that meets a slow link ends after the chunks already in flight, whatever ``size`` was.
    With ``reply_bytes`` each echo asks for only that many bytes back (a probe of the
    uplink alone); the bytes back are counted as they come.
    """
    sizes = [min(chunk, size - start) for start in range(0, max(size, 1), chunk)]
    meta = {} if reply_bytes is None else {"reply_bytes": reply_bytes}
    t0 = time.perf_counter()
    in_flight = collections.deque()  # request ids sent, not yet back
    sent = back = 0
    for i, n in enumerate(sizes):
        if i and (time.perf_counter() - t0) * 1000.0 > cap_ms:
            break
        in_flight.append(conn.send(p.ECHO, meta, np.zeros(n, dtype=np.uint8))[0])
        sent += n
        back += _echoes_back(conn, in_flight, keep=0 if i == 0 else 1)
    back += _echoes_back(conn, in_flight, keep=0)
    return sent, back, (time.perf_counter() - t0) * 1000.0


def _echoes_back(conn, in_flight, keep):
    """Wait for the oldest echoes until ``keep`` are left in flight; the bytes they brought back."""
    done = 0
    while len(in_flight) > keep:
        frame = conn.expect(p.RESULT, in_flight.popleft())
        done += frame.array.nbytes if frame.array is not None else 0
    return done


def probe_network(conn, sizes=PROBE_SIZES, repeats=PROBE_REPEATS):
    """Echo a few payload sizes over ``conn``; fit round trip = rtt + 2 * bytes / bandwidth (both directions)."""
    samples = []
    for size in sizes:
        times = [echo_once(conn, size) for _ in range(repeats)]
        samples.append((size, float(np.median(times))))
        if samples[-1][1] > PROBE_ENOUGH_MS and len(samples) >= 2:
            break
    sizes_arr = np.array([s for s, _ in samples], dtype=np.float64)
    times_arr = np.array([t for _, t in samples], dtype=np.float64)
    slope, intercept = np.polyfit(2 * sizes_arr, times_arr, 1)  # ms per byte, both directions
    slope = max(slope, 1e-9)
    return {"rtt_ms": max(float(intercept), 0.0), "bandwidth_mbps": 8.0 / (slope * 1000.0),
            "samples": [{"bytes": s, "ms": t} for s, t in samples], "source": "probe"}
