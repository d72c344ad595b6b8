"""`profile` and `plan`, and `run-edge --split auto`: measure both sides and the network, then choose a split.

Python 3.6 syntax: this module runs on the Jetson.
"""
import os
import sys

from runtime.backends import format_of, load_file
from runtime.backends.profiling import ProfileCache, profile_key, profile_segments, read_profile, write_profile
from runtime.bundle.manifest import load_manifest, validate
from runtime.edge.planner import at_cadence, check_profiles, choose, format_plan, predict
from runtime.edge.probe import probe_network
from runtime.errors import UserError


def _say(message):
    sys.stderr.write("plan: {}\n".format(message))
    sys.stderr.flush()


def cloud_profile(conn, model, batch_size):
    """The cloud's segments manifest and its own profile of them (PROFILE)."""
    done = conn.profile(model, batch_size)
    return validate(done.get("manifest"), "the cloud's segments manifest"), done.get("profile")


def edge_profile(session, segments_data, batch_size):
    """This side's profile of the segments: from the profile cache, or measured now (fetching the segments)."""
    cache = session.cache
    formats = session.formats
    profiles = ProfileCache(os.path.join(cache.root, ".profiles"))
    manifest = cache.lookup(segments_data, formats, part="segments")
    if manifest is None:
        _say("fetching the segments of {} for profiling".format(segments_data["model"]["id"]))
        manifest, _, _ = cache.fetch(session.conn, segments_data, formats, part="segments")
    session.use_segments(manifest)
    first = manifest["segments"][0]["files"][formats[0]]["file"]
    provider = load_file(os.path.join(manifest.directory, first), session.backend, session.device, session.threads,
                         manifest.directory).provider
    hit = profiles.get(profile_key(manifest, session.backend, provider, session.device, batch_size, session.threads))
    if hit:
        return hit
    _say("profiling {} segments here ({} backend)".format(len(manifest["segments"]), session.backend))
    profile = profile_segments(manifest, session.backend, session.device, batch_size, session.threads)
    profiles.put(profile)
    return profile


def with_encoded_sizes(profile, encoder):
    """The profile with each point's bytes per sample as ``--compress``/``--codec`` will send them."""
    if encoder is None or (encoder.scheme == "none" and encoder.codec == "none"):
        return profile
    from runtime.wire.compression import encoded_bytes_estimate
    points = [dict(pt, bytes_per_sample=encoded_bytes_estimate(encoder.scheme, encoder.codec, [1] + list(pt["shape"])))
              for pt in profile["points"]]
    return dict(profile, points=points)


def measure_network(conn, bandwidth=None, rtt=None):
    if bandwidth is not None and rtt is not None:
        return {"rtt_ms": rtt, "bandwidth_mbps": bandwidth, "source": "given"}
    net = probe_network(conn)
    if bandwidth is not None:
        net["bandwidth_mbps"], net["source"] = bandwidth, "bandwidth given, rtt probed"
    if rtt is not None:
        net["rtt_ms"], net["source"] = rtt, "rtt given, bandwidth probed"
    return net


def make_plan(session, options, profiles=None):
    """Profiles of both sides + the network -> (rows, choice, network); ``profiles`` (a dict) receives both.

    ``options`` (ClientOptions): ``batch_size``, ``bandwidth`` and ``rtt`` (None: measured), ``objective``,
    ``edge_profile`` / ``cloud_profile`` (files instead of measuring), ``interval_ms``.  With ``interval_ms``
    (run-edge --interval-ms) the latency objective is the latency from release (planner.at_cadence), the
    link's deviation taken as a quarter of its time per bit until measured."""
    batch_size, cloud_file, edge_file = options.batch_size, options.cloud_profile, options.edge_profile
    segments_data, cloud = cloud_profile(session.conn, session.model, batch_size)
    if cloud_file:
        cloud = read_profile(cloud_file)
    edge = read_profile(edge_file) if edge_file else edge_profile(session, segments_data, batch_size)
    check_profiles(edge, cloud)
    edge = with_encoded_sizes(edge, getattr(session, "encoder", None))
    if profiles is not None:
        profiles.update(edge=edge, cloud=cloud)
    network = measure_network(session.conn, options.bandwidth, options.rtt)
    rows = predict(edge["points"], edge["segment_ms"], cloud["segment_ms"], network["rtt_ms"],
                   network["bandwidth_mbps"], batch_size, edge.get("output_bytes_per_sample", 0))
    if options.interval_ms:
        rows = at_cadence(rows, options.interval_ms, 0.25 / network["bandwidth_mbps"], batch_size,
                          edge.get("output_bytes_per_sample", 0))
    return rows, choose(rows, options.objective), network


def run_plan(options, out=None):
    """The plan command (``PlanOptions``): print the predicted table and the choice."""
    import json

    from runtime.edge.session import EdgeSession
    o = options
    out = out or sys.stdout
    session = EdgeSession(o)
    try:
        rows, choice, network = make_plan(session, o)
    finally:
        session.close()
    if o.as_json:
        out.write(json.dumps({"network": network, "objective": o.objective, "batch_size": o.batch_size,
                              "choice": choice, "rows": rows}, indent=1) + "\n")
    else:
        out.write(format_plan(rows, choice, network, o.objective) + "\n")
    return rows, choice, network


def run_profile(options):
    """The profile command (``ProfileOptions``): this side's profile, from a local segments bundle or one fetched
    from the cloud."""
    o = options
    if bool(o.cloud) == bool(o.segments_dir):
        raise UserError("give --cloud HOST:PORT (fetch the segments) or --segments DIR (a local segments bundle)")
    if o.segments_dir:
        manifest = load_manifest(o.segments_dir)
        manifest.verify_files(formats=(format_of(o.backend),))
        profile = profile_segments(manifest, o.backend, o.device, o.batch_size, o.threads)
    else:
        from runtime.edge.session import EdgeSession
        session = EdgeSession(o)
        try:
            segments_data, _ = cloud_profile(session.conn, o.model, o.batch_size)
            profile = edge_profile(session, segments_data, o.batch_size)
        finally:
            session.close()
    write_profile(o.out, profile)
    sys.stdout.write("profile of {} ({} segments, {:.3f} ms in all, {} {} batch {}) -> {}\n".format(
        profile["key"]["model"], len(profile["segment_ms"]), sum(profile["segment_ms"]), profile["key"]["backend"],
        profile["key"]["provider"], o.batch_size, o.out))
    return profile
