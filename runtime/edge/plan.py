"""`profile` and `plan`, and `run-edge --split auto`: measure both sides and the network, then choose a split.

Python 3.6 syntax: this module runs on the Jetson.
"""
import os
import sys

from runtime.backends import format_of, load_file
from runtime.backends.profiling import ProfileCache, profile_key, profile_segments, read_profile, write_profile
from runtime.bundle.manifest import load_manifest, validate
from runtime.bundle.schema import LOCAL
from runtime.edge.console import say
from runtime.edge.link import SAMPLE_S, read_link_profile
from runtime.edge.planner import (
    DEFAULT_RADIO_NJ_PER_BYTE,
    best_baseline,
    check_profiles,
    choose,
    distribution,
    format_plan,
    mark_served,
    objective_figure,
    predict,
    ratio_to,
    served_rows,
    with_cuts,
    with_energy,
)
from runtime.edge.probe import probe_network
from runtime.errors import UserError


def cloud_profile(conn, model, batch_size):
    """The cloud's segments manifest and its own profile of them (PROFILE)."""
    done = conn.profile(model, batch_size)
    return validate(done.get("manifest"), "the cloud's segments manifest"), done.get("profile")


class SegmentPower(object):
    """What ``profile_segments`` measures each segment's energy with: a Sampler of ``meter`` (runtime/edge/power.py)
    around the segment's repetitions, and the idle power, measured once when ``info`` is first read (before the
    first segment's repetitions, with nothing running)."""

    def __init__(self, meter):
        self.meter = meter
        self.source, self.rail = meter.source, meter.rail
        self._info = None
        self._sampler = None

    @property
    def info(self):
        if self._info is None:
            from runtime.edge.power import measure_idle
            idle = measure_idle(self.meter)
            if idle.problem:
                raise UserError("cannot measure the idle power on {} ({}): {}".format(self.rail, self.source,
                                                                                     idle.problem))
            self._info = {"source": self.source, "rail": self.rail, "idle_power_mw": idle.avg_power_mw}
        return self._info

    def start(self):
        from runtime.edge.power import Sampler
        self._sampler = Sampler(self.meter)
        self._sampler.start()

    def stop(self):
        sampler, self._sampler = self._sampler, None
        return sampler.stop()


def open_power(source, sysfs_root="/"):
    """(a SegmentPower, None) for ``--power SOURCE``, or (None, why not) where nothing is measured."""
    if not source or source == "none":
        return None, "--power none"
    from runtime.edge.power import open_meter
    meter = open_meter(source, sysfs_root or "/")
    if not meter.measured:
        return None, meter.reason
    return SegmentPower(meter), None


def _has_energy(profile, power=None):
    """The profile has energy per segment (measured with ``power``'s meter, if given)."""
    energy = profile.get("energy") or {}
    return "segment_mj" in profile and (power is None or (energy.get("source"), energy.get("rail")) ==
                                        (power.source, power.rail))


def profile_cache(cache_root):
    """The edge's cached profiles: ``<cache>/.profiles/``."""
    return ProfileCache(os.path.join(cache_root, ".profiles"))


def edge_profile(session, segments_data, batch_size, power=None, required=None, fresh=False):
    """This side's profile of the segments: from the profile cache, or measured now (fetching the segments).

    ``power`` (SegmentPower): measure each segment's energy too, unless the cached profile has it from the same
    meter; ``required`` (a message): the energy is needed and cannot be measured here, so a cached profile without
    it is refused with this message instead of profiling; ``fresh`` (``--reprofile``): measure it now whatever is
    cached, and replace it."""
    cache = session.cache
    formats = session.formats
    profiles = profile_cache(cache.root)
    manifest = cache.lookup(segments_data, formats, part="segments")
    if manifest is None and required is not None:
        raise UserError(required)  # no segments here, so no profile of them either
    if manifest is None:
        say("fetching the segments of {} for profiling".format(segments_data["model"]["id"]))
        manifest, _, _ = cache.fetch(session.conn, segments_data, formats, part="segments")
    session.use_segments(manifest)
    first = manifest["segments"][0]["files"][formats[0]]["file"]
    provider = load_file(os.path.join(manifest.directory, first), session.backend, session.device, session.threads,
                         manifest.directory).provider
    hit = profiles.get(profile_key(manifest, session.backend, provider, session.device, batch_size, session.threads))
    if hit and not fresh and (power is None or _has_energy(hit, power)) and (required is None or _has_energy(hit)):
        return hit
    if required is not None:
        raise UserError(required)
    say("profiling {} segments here ({} backend{})".format(len(manifest["segments"]), session.backend, "" if power
                                                            is None else ", energy on {} ({})".format(power.rail,
                                                                                                     power.source)))
    profile = profile_segments(manifest, session.backend, session.device, batch_size, session.threads, power=power)
    profiles.put(profile)
    return profile


def no_energy(where, why):
    """The one line that refuses ``--objective energy`` without the edge's energy, and says how to get it."""
    return ("--objective energy needs the edge's energy per segment, and {} has none ({}); measure it on the edge "
            "with `cli.py profile --power auto --out-json edge.json` (or name the meter: --power ina3221, jtop or rapl) and "
            "plan with --edge-profile edge.json, or give --power here".format(where, why))


def _energy_reason(profile):
    energy = profile.get("energy") or {}
    return energy.get("reason") or "profiled without a power meter"


def with_encoded_sizes(profile, encoder):
    """The profile with each point's bytes per sample as ``--compress``/``--codec`` will send them."""
    if encoder is None or (encoder.scheme == "none" and encoder.codec == "none"):
        return profile
    from runtime.wire.compression import encoded_bytes_estimate
    points = [dict(pt, bytes_per_sample=encoded_bytes_estimate(encoder.scheme, encoder.codec, [1] + list(pt["shape"])))
              for pt in profile["points"]]
    cuts = [dict(cut, bytes_per_sample=sum(encoded_bytes_estimate(encoder.scheme, encoder.codec, [1] + list(t["shape"]))
                                           for t in cut["tensors"])) for cut in profile.get("cuts", ())]
    return dict(profile, points=points, cuts=cuts)


def measure_network(conn, bandwidth=None, rtt=None, samples=None):
    """The network the plan is made for: ``--bandwidth`` / ``--rtt`` where given, else probed; ``samples`` (a link
    profile's throughput samples, Mbit/s) are the link's rate unless ``--bandwidth`` overrides them, with their
    harmonic mean as its one rate (the rate of their mean time per bit).  A link known by one rate carries the
    deviation the plan assumes at a cadence until measured: a quarter of its time per bit."""
    if bandwidth is not None and rtt is not None:
        net = {"rtt_ms": rtt, "bandwidth_mbps": bandwidth, "source": "given"}
    elif samples and bandwidth is None and rtt is not None:
        net = {"rtt_ms": rtt, "source": "rtt given"}
    else:
        net = probe_network(conn)
        if bandwidth is not None:
            net["bandwidth_mbps"], net["source"] = bandwidth, "bandwidth given, rtt probed"
        if rtt is not None:
            net["rtt_ms"], net["source"] = rtt, "rtt given, bandwidth probed"
    if samples and bandwidth is None:
        net.update(bandwidth_mbps=len(samples) / sum(1.0 / s for s in samples), samples_mbps=list(samples),
                   source="link profile: {} samples of {:g} s; {}".format(len(samples), SAMPLE_S, "rtt given" if
                                                                       rtt is not None else "rtt probed"))
    else:
        net["dev_us_per_bit"] = 0.25 / net["bandwidth_mbps"]
    return net


def _edge(session, options, segments_data, measure_energy=False):
    """The edge's profile for ``make_plan``: a file, or the cache, or measured now (with its energy where the
    energy objective, or ``measure_energy``, asks for it and a meter is there)."""
    o = options
    fresh = getattr(o, "reprofile", False)
    if o.edge_profile and fresh:
        raise UserError("--reprofile measures this edge's profile again, --edge-profile {} reads one: give one of "
                        "them".format(o.edge_profile))
    if o.edge_profile:
        edge = read_profile(o.edge_profile)
        if o.objective == "energy" and not _has_energy(edge):
            raise UserError(no_energy(o.edge_profile, _energy_reason(edge)))
        return edge
    power, why = (None, None)
    if o.objective == "energy" or measure_energy:
        power, why = open_power(getattr(o, "power", "auto"), getattr(o, "sysfs_root", "/"))
    required = no_energy("this edge's profile", why) if o.objective == "energy" and power is None else None
    try:
        edge = edge_profile(session, segments_data, o.batch_size, power, required, fresh)
    finally:
        if power is not None:
            power.meter.close()
    if o.objective == "energy" and not _has_energy(edge):
        raise UserError(no_energy("this edge's profile", _energy_reason(edge)))
    return edge


def make_plan(session, options, profiles=None, measure_energy=False, cuts=True):
    """Profiles of both sides + the network -> (rows, choice, network); ``profiles`` (a dict) receives both.

    ``options`` (ClientOptions): ``batch_size``, ``bandwidth`` and ``rtt`` (None: measured), ``objective``,
    ``max_latency_ms``, ``radio_nj_per_byte``, ``edge_profile`` / ``cloud_profile`` (files instead of measuring),
    ``interval_ms``, ``link_profile`` (a link trace: the link's samples), ``deadline_ms`` (run-edge's hedging),
    ``power`` / ``sysfs_root`` (the meter the edge's energy is profiled with, for ``--objective energy`` or
    ``measure_energy``).  Every split's latency is taken over the link's samples (planner.distribution: expected
    and p95, hedged at the deadline, from release at a cadence; one sample, the probe's or --bandwidth's, without
    a link profile).  Where the edge's profile has its energy per segment, the rows have it too (planner.with_energy).
    With ``cuts`` the segments bundle's cuts of several tensors are planned too (planner.predict).  Split
    ``"local"`` is planned too; the choice is among the splits that can run (``servable``)."""
    batch_size, cloud_file = options.batch_size, options.cloud_profile
    link = options.link_profile
    samples = read_link_profile(link) if link and options.bandwidth is None else None  # a bad file: said first
    segments_data, cloud = cloud_profile(session.conn, session.model, batch_size)
    if cloud_file:
        cloud = read_profile(cloud_file)
    edge = _edge(session, options, segments_data, measure_energy)
    check_profiles(edge, cloud)
    edge = with_encoded_sizes(edge, getattr(session, "encoder", None))
    if profiles is not None:
        profiles.update(edge=edge, cloud=cloud)
    network = measure_network(session.conn, options.bandwidth, options.rtt, samples)
    output_bytes = edge.get("output_bytes_per_sample", 0)
    splits = with_cuts(edge["points"], edge.get("cuts", ()) if cuts else ()) + [LOCAL]
    rows = predict(edge["points"], edge["segment_ms"], cloud["segment_ms"], network["rtt_ms"],
                   network["bandwidth_mbps"], batch_size, output_bytes, splits)
    rows = mark_served(rows, *servable(session))
    served_rows(rows, session.model)  # none: say what to export, whatever the objective
    deadline = getattr(options, "deadline_ms", None)
    rows = distribution(rows, network, batch_size, output_bytes, options.interval_ms,
                        None if deadline is None else (deadline, float(sum(edge["segment_ms"]))))
    if _has_energy(edge):
        rows = with_energy(rows, edge["segment_mj"], radio_cost(options), batch_size, output_bytes)
    return rows, choose(rows, options.objective, options.max_latency_ms), network


def servable(session):
    """What the plan may choose for ``session.model``: (the splits the cloud holds, None where its STATUS does not
    say; whether it exports splits on demand; whether the edge's cache holds the whole model, for ``"local"``)."""
    from runtime.edge.session import find_full_model
    local = find_full_model(session.cache.root, session.model, session.backend) is not None
    models = session.conn.status().get("models")
    if not isinstance(models, dict):
        return None, False, local
    held = models.get(session.model) or {}
    return held.get("splits") or [], bool(held.get("on_demand")), local


def radio_cost(options):
    """``--radio-nj-per-byte``, or the default (planner.DEFAULT_RADIO_NJ_PER_BYTE)."""
    value = getattr(options, "radio_nj_per_byte", None)
    return DEFAULT_RADIO_NJ_PER_BYTE if value is None else value


def run_plan(options, out=None):
    """The plan command (``PlanOptions``): print the predicted table and the choice."""
    import json

    from runtime.edge.models import resolve
    from runtime.edge.session import EdgeSession
    o = options
    out = out or sys.stdout
    resolve(o)
    session = EdgeSession(o, o.compress, o.codec)
    profiles = {}
    try:
        rows, choice, network = make_plan(session, o, profiles)
    finally:
        session.close()
    energy = profiles["edge"].get("energy") if "segment_mj" in profiles["edge"] else None
    if o.as_json:
        figure = objective_figure(rows, o.objective)
        baseline = best_baseline(rows, figure)
        plan = {"network": network, "objective": o.objective, "batch_size": o.batch_size,
                "max_latency_ms": o.max_latency_ms, "choice": choice,
                "best_baseline": None if baseline is None else {"split": baseline["split"], "figure": figure,
                                                                figure: baseline[figure],
                                                                "latency_ms": baseline["latency_ms"]},
                "rows": [dict(r, vs_best_baseline=ratio_to(r, baseline, figure)) for r in rows]}
        if energy is not None:
            plan["energy"] = {"source": energy["source"], "rail": energy["rail"],
                              "idle_power_mw": energy["idle_power_mw"], "radio_nj_per_byte": radio_cost(o)}
        out.write(json.dumps(plan, indent=1) + "\n")
    else:
        out.write(format_plan(rows, choice, network, o.objective, radio_cost(o)) + "\n")
    return rows, choice, network


def run_profile(options):
    """The profile command (``ProfileOptions``): this side's profile, from a local segments bundle or one fetched
    from the cloud; with ``--power`` (and a meter found), each segment's energy too."""
    o = options
    if bool(o.cloud) == bool(o.segments_dir):
        raise UserError("give --cloud HOST:PORT (fetch the segments) or --segments-dir DIR (a local segments bundle)")
    power, why = open_power(o.power, o.sysfs_root)
    if power is None and o.power != "none":
        say("energy not measured: {}".format(why))
    try:
        profile = _profile_here(o, power)
    finally:
        if power is not None:
            power.meter.close()
    write_profile(o.out, profile)
    sys.stdout.write("profile of {} ({} segments, {:.3f} ms in all{}, {} {} batch {}) -> {}\n".format(
        profile["key"]["model"], len(profile["segment_ms"]), sum(profile["segment_ms"]), _energy_words(profile),
        profile["key"]["backend"], profile["key"]["provider"], o.batch_size, o.out))
    return profile


def _profile_here(o, power):
    if o.segments_dir:
        manifest = load_manifest(o.segments_dir)
        manifest.verify_files(formats=(format_of(o.backend),))
        return profile_segments(manifest, o.backend, o.device, o.batch_size, o.threads, power=power)
    from runtime.edge.models import resolve
    from runtime.edge.session import EdgeSession
    resolve(o)
    session = EdgeSession(o)
    try:
        segments_data, _ = cloud_profile(session.conn, o.model, o.batch_size)
        return edge_profile(session, segments_data, o.batch_size, power)
    finally:
        session.close()


def _energy_words(profile):
    if "segment_mj" not in profile:
        reason = (profile.get("energy") or {}).get("reason")
        return ", energy not measured ({})".format(reason) if reason else ""
    e = profile["energy"]
    return ", {:.3f} mJ in all above an idle {:.0f} mW on {} ({})".format(
        sum(profile["segment_mj"]), e["idle_power_mw"], e["rail"], e["source"])
