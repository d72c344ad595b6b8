"""Profiles that go stale: a run's measured head time against what the cached edge profile predicts for it.

A cached profile is kept until it is replaced; one measured while the machine was
busy (or before a change of clocks or power mode) keeps ``plan`` and ``sweep``
predicting the wrong figures.  At the end of a run, ``refresh_stale_profile`` compares
the run's median head time at its split with the profile's prediction, and where it
differs by more than ``STALE_SHARE`` measures the profile again and replaces it.

Python 3.6 syntax: this module runs on the Jetson.
"""
import numpy as np

from runtime.backends.profiling import METHOD, profile_segments
from runtime.bundle.manifest import KIND_SEGMENTS
from runtime.bundle.store import BundleStore
from runtime.edge import console

STALE_SHARE = 0.25  # a measured figure this far (as a share) from the profile's prediction makes it stale ...
# ... and at least this far in ms: a run's head time has fixed costs per request (the call into the backend, the
# preprocessing's copy) that a profile of the bare segments leaves out, tens of microseconds that are a large share
# of a tiny head and say nothing about the machine's state
STALE_MIN_MS = 1.0


def drift(predicted_ms, measured_ms):
    """The measured figure's change from the predicted one, as a share of it (+0.5: 50% slower than predicted);
    None where nothing is predicted (0 ms)."""
    if not predicted_ms:
        return None
    return (measured_ms - predicted_ms) / float(predicted_ms)


def stale(edge, split, head_ms, cloud=None, tail_ms=None):
    """The figures of point ``split`` that differ from their profile's prediction by more than STALE_SHARE:
    ``{"edge": (predicted, measured, drift)}`` for the head against the ``edge`` profile, and ``"cloud"`` for the
    tail (``tail_ms``) against the ``cloud`` profile where both are given; empty where both are fresh."""
    figures = {"edge": (sum(edge["segment_ms"][:split]), head_ms)}
    if cloud is not None and tail_ms is not None:
        figures["cloud"] = (sum(cloud["segment_ms"][split:]), tail_ms)
    out = {}
    for side, (predicted, measured) in figures.items():
        change = drift(predicted, measured)
        if change is not None and abs(change) > STALE_SHARE and abs(measured - predicted) > STALE_MIN_MS:
            out[side] = (float(predicted), float(measured), change)
    return out


def head_times(recorder, split):
    """The run's head times (ms) at ``split``: the edge figure of every request the cloud answered (one answered
    on the edge also counts what ran there after the head), those at other splits left out where the run
    switched."""
    return [ms for ms, (_, at), (path, _) in zip(recorder.records["edge_ms"], recorder.timeline, recorder.paths)
            if at == split and path == "cloud"]


def refresh_stale_profile(session, options, recorder, say=None):
    """After a run: where this model's edge profile for the run's backend, provider, device, batch size and threads
    is cached and predicts the run's median head time at its split (a point with a head) more than STALE_SHARE
    off, say so in one line, measure the profile again from the cached segments and replace it.  Returns the new
    profile, or None where nothing was done.  Not after a run whose head time includes compression."""
    from runtime.edge.plan import profile_cache
    manifest, o = session.manifest, options
    split = session.split_label if manifest is not None else None  # "local" (--split local): no profile to check
    if not isinstance(split, int) or split == 0 or manifest.part("head") is None or \
            (getattr(o, "compress", "none"), getattr(o, "codec", "none")) != ("none", "none"):
        return None
    times = head_times(recorder, split)
    profiles = profile_cache(session.cache.root)
    cached = profiles.find(method=METHOD, model=manifest.model_id, backend=session.backend,
                           provider=session.head.provider, device=session.device, batch_size=o.batch_size,
                           threads=session.threads)
    if not times or cached is None:
        return None
    found = stale(cached, split, float(np.median(times))).get("edge")
    segments = _segments(session.cache.root, cached["key"]["segments"])
    if found is None or segments is None:
        return None
    predicted, measured, change = found
    (say or console.say)("the edge's profile predicts {:.3f} ms for the head of split {}, this run measured {:.3f} ms "
                  "({:+.0%}); re-profiling ({} segments)".format(predicted, split, measured, change,
                                                                 len(segments["segments"])))
    profile = profile_segments(segments, session.backend, session.device, o.batch_size, session.threads)
    profiles.put(profile)
    return profile


def _segments(cache_root, bundle_id):
    """The segments bundle ``bundle_id`` in the edge's cache, or None."""
    for manifest in BundleStore(cache_root).scan(KIND_SEGMENTS)[0]:
        if manifest.bundle_id == bundle_id:
            return manifest
    return None
