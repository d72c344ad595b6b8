"""Compute profiles: the median time of every segment of a ``segments`` bundle.

A profile is measured with the backend, provider and device that will really run
it, at one batch size, after warm-up runs, and kept as JSON keyed by (segments
bundle id, backend, provider, device, batch size, threads), so a Jetson's profile
made once is reused.  Both sides use it: the edge for its head, serve-cloud for its
tails (PROFILE).

With a power meter (the edge's ``profile --power``), each segment's energy is
measured too: after the timed runs, the segment runs over and over on its own chain
input for at least ``ENERGY_WINDOW_S`` (a Jetson's INA3221 updates every few ms and
its sysfs reads are slow, so one run is far too short to see), and

    segment_mj = (energy during its repetitions - idle power x their duration) / repetitions

is recorded as ``segment_mj`` (mJ per run at the profile's batch size: what the
device spends above idle while the segment runs), with the meter's source, rail and
idle power under ``energy``.  A profile without ``segment_mj`` was measured without a
meter (or its reading failed, ``energy.reason`` says why): absent means not measured.

Every profile says when and under what load it was measured (``measured_unix``;
``load_1min``, the 1-minute load average, and ``cpu_count``, each None where the
system does not say), so a profile measured while the machine was busy can be told
apart.  Profiles written before these fields load as before.

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

ENERGY_WINDOW_S = 0.3  # the least time of repetitions per segment whose energy is measured


def profile_key(manifest, backend, provider, device, batch_size, threads=0):
    return {"method": METHOD, "segments": manifest.bundle_id, "model": manifest.model_id, "backend": backend, "provider": provider,
            "device": device, "batch_size": batch_size, "threads": threads}


def profile_segments(manifest, backend="onnx", device="auto", batch_size=1, threads=0, runs=RUNS, warmup=WARMUP,
                     power=None):
    """Time every segment of a segments bundle here; return the profile (a JSON-able dict).

    The segments run as a chain, each on the previous one's output, and every run
    times each of them: a segment meets the caches as the model's forward pass
    leaves them (timing one small segment over and over would keep its weights hot
    and flatter it).  Each segment's median is then scaled so that the segments add
    up to the *mean* time of a whole chain: stalls that hit only some runs (a CPU
    quota's throttling, another process) are real time the edge will spend, and a
    median per segment would drop them.

    ``power`` (the edge's, None: no energy): ``start()``, ``stop()`` -> a window with ``energy_mj``,
    ``duration_s`` and ``problem``, and ``info``, a dict with the meter's ``source``, ``rail`` and
    ``idle_power_mw`` (see ``segment_energy``).
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
    inputs = [x0] * len(runners)  # each segment's input in the chain, for the energy runs
    for r in range(warmup + runs):
        x = x0
        start = time.perf_counter()
        for i, runner in enumerate(runners):
            inputs[i] = x
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
    profile = {"key": profile_key(manifest, backend, provider, device, batch_size, threads), "segment_ms": segment_ms,
               "chain_ms": {"mean": float(np.mean(totals)), "median": float(np.median(totals))},
               "points": manifest["points"], "cuts": manifest.data.get("cuts", []),
               "output_bytes_per_sample": manifest["output"]["bytes_per_sample"],
               "runs": runs, "warmup": warmup, "measured": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "measured_unix": time.time()}
    profile.update(machine_load())
    if power is not None:
        profile.update(segment_energy(runners, inputs, power))
    return profile


def machine_load():
    """``{"load_1min": the 1-minute load average, "cpu_count": CPUs}``, each None where the system does not say."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on every system
        load = None
    return {"load_1min": load, "cpu_count": os.cpu_count()}


def segment_energy(runners, inputs, power, window_s=ENERGY_WINDOW_S):
    """``{"segment_mj": [...], "energy": {...}}``: each segment's energy per run above idle (see the module's
    docstring), or ``{"energy": {..., "reason": ...}}`` without ``segment_mj`` where a window's reading failed."""
    idle_mw = float(power.info["idle_power_mw"])
    energy = dict(power.info, method="repeat-above-idle", window_s=window_s, repetitions=[])
    segment_mj = []
    for runner, x in zip(runners, inputs):
        power.start()
        n, t0 = 0, time.perf_counter()
        while n == 0 or time.perf_counter() - t0 < window_s:
            runner.run(x)
            n += 1
        window = power.stop()
        if window.problem:
            energy.update(repetitions=None, reason="segment {}: {}".format(len(segment_mj), window.problem))
            return {"energy": energy}
        # noise can make a tiny segment read below idle; it cannot really cost less than nothing
        segment_mj.append(max(0.0, (window.energy_mj - idle_mw * window.duration_s) / n))
        energy["repetitions"].append(n)
    return {"segment_mj": segment_mj, "energy": energy}


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

    def find(self, **fields):
        """A cached profile whose key has these ``fields`` (model, backend, provider, ...), or None."""
        if not os.path.isdir(self.root):
            return None
        for name in sorted(os.listdir(self.root)):
            if name.endswith(".json"):
                profile = read_profile(os.path.join(self.root, name))
                key = profile.get("key") or {}
                if all(key.get(f) == v for f, v in fields.items()):
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
