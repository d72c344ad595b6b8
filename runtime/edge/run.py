"""``run-edge``: run the head on this device, the tail on the cloud, and report as the seed did.

The edge asks the cloud which bundle to use (the one for ``--split``, or the one
active for its model), takes its head from the local cache or fetches it over the
same connection (``session.EdgeSession``), runs the measured loop
(``measure.measure``) and writes the report.

Needs numpy and onnxruntime only (torch for ``--backend torchscript``).

Python 3.6 syntax: this module runs on the Jetson.
"""
import sys

from runtime.backends import load_part
from runtime.bundle.schema import is_cut
from runtime.edge.client import CloudConnection
from runtime.edge.console import say
from runtime.edge.data import batches, check_source, open_dataset
from runtime.edge.hedge import hedging
from runtime.edge.kserve import is_kserve
from runtime.edge.local import LOCAL, LocalModel, LocalSession, full_model
from runtime.edge.measure import measure
from runtime.edge.models import resolve as resolve_model
from runtime.edge.points import resolve_splits
from runtime.edge.power import open_meter
from runtime.edge.report import format_notes, format_report, write_report
from runtime.edge.session import EdgeSession
from runtime.edge.staleness import refresh_stale_profile
from runtime.errors import Interrupted, UserError


def print_status(cloud, timeout=10.0, security=None, out=None):
    """The status command: the server's counters as JSON."""
    import json
    conn = CloudConnection(cloud, timeout, security=security)
    try:
        (out or sys.stdout).write(json.dumps(conn.status(), indent=1, sort_keys=True) + "\n")
    finally:
        conn.close()


def run_edge(options, out=None):
    """The run-edge command (``RunOptions``).  Returns the report dict; prints the seed's report to ``out``."""
    o = options
    out = out or sys.stdout
    _check(o)
    meter = open_meter(o.power, o.sysfs_root)  # a source named with --power that is not here stops the run now
    check_source(o.dataset, o.data_dir)  # a dataset that is not here is said before anything connects
    resolve_model(o)
    full = _full_model(o)
    o.split = resolve_splits(o, [o.split])[0]  # an index, a K.J cut or a name, checked before anything is asked for
    session = LocalSession(o) if o.split == LOCAL else \
        EdgeSession(o, o.compress, o.codec, busy_poll=o.busy_poll and o.inflight == 1 and not hedging(o))
    try:
        planned, adapter, split = _plan(session, o)
        if split == LOCAL and not isinstance(session, LocalSession):
            session.close()  # planned: the whole model here is predicted fastest
            session = LocalSession(o)
        manifest = session.switch_to(split=split) if split != LOCAL else session.manifest
        if (hedging(o) or adapter is not None) and split != LOCAL:
            session.local = _local_model(session, o)
        if adapter is not None:
            adapter.local = session.local.whole is not None
            alternates = adapter.alternates(manifest.split_index)
            adapter.loaded.update([manifest.split_index] + alternates)
            if alternates:
                say("preloading the heads of split {} (the plan for a link 4x slower or faster)".format(
                    " and ".join(str(k) for k in alternates)))
                session.preload(alternates)
            adapter.load_ms = session.load_ms(adapter.load_ms)  # this edge's own figure for a head's load
        _check_frame_size(manifest, session.welcome, o)
        scored = manifest.outputs[0]  # a model of several outputs is scored on its first
        data = open_dataset(o.dataset, manifest["input"], scored["shape"][-1], limit=o.limit, seed=o.seed,
                            data_dir=o.data_dir, output_shape=scored["shape"])
        plan = batches(data, o.batch_size, o.limit, o.shuffle, o.seed)
        if not plan:
            raise UserError("the dataset {} is empty".format(o.dataset))
        fallback = (lambda: (load_part(full, "head", o.backend, o.device, o.threads), full.bundle_id)) if full else None
        recorder = measure(session, data, plan, o, adapter, fallback, out, meter)
    finally:
        session.close()
        meter.close()

    summary = recorder.summary()
    requests = len(plan) if recorder.stopped is None else recorder.requests
    notes = format_notes(manifest, o.inflight if split != LOCAL else 1)
    out.write(format_report(summary, recorder.samples, requests, recorder.warmup_requests, notes) + "\n")
    if recorder.switches:
        out.write("Switches: {}\n".format(", ".join("split {} -> {} after {} samples ({:.2f} s)".format(
            s["from_split"], s["to_split"], s["after_samples"], s["time_s"]) for s in recorder.switches)))
    if recorder.stopped is None:
        refresh_stale_profile(session, o, recorder)
    info = _run_info(o, session, manifest, data, recorder, planned, adapter)
    if o.report:
        info = write_report(o.report, info, recorder)
    else:
        info.update(summary)
    if recorder.stopped is not None:
        raise _stopped(recorder, o)
    _energy_outcome(o, meter, summary.get("energy"))
    return info


def _stopped(recorder, o):
    """The error that ends a run stopped before its last sample, raised once the samples done are reported."""
    if not isinstance(recorder.stopped, KeyboardInterrupt):
        return recorder.stopped  # its own words (a cloud that stayed away says how many samples were done)
    return Interrupted("interrupted after {} of {} samples{}".format(
        recorder.samples, recorder.planned, "; {} holds them, marked partial".format(o.report) if o.report else ""))


def _energy_outcome(o, meter, energy):
    """A source that opened but did not measure the run (a rail gone mid-run, a malformed value): one line, and
    an error (after the report is out) where the user named the source."""
    if not meter.measured or energy is None or energy["measured"]:
        return
    if meter.named:
        raise UserError("--power {}: the energy was not measured: {}".format(o.power, energy["reason"]))
    say("energy not measured: {}".format(energy["reason"]))


def _check(o):
    """Refuse option combinations that cannot work, before anything connects."""
    if o.split == LOCAL:
        _check_local(o)
    elif not o.cloud:
        raise UserError("give --cloud HOST:PORT (serve-cloud) or grpc:// / http:// (Triton), or run the whole model "
                        "on this device with --split local")
    if o.deadline_ms is not None or o.max_age_ms is not None:
        _check_hedging(o)
    if o.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if o.inflight < 1:
        raise UserError("--inflight must be at least 1")
    if o.adaptive and o.inflight > 1:
        raise UserError("--adaptive needs --inflight 1: pipelined round trips include the wait behind earlier "
                        "requests, which would read as a slow link")
    if o.adaptive and (o.objective == "energy" or o.max_latency_ms is not None):
        raise UserError("--adaptive re-plans for latency or throughput only, without --max-latency-ms; drop "
                        "--adaptive to run the split that --split auto plans for them")
    if o.adaptive and is_cut(o.split):
        raise UserError("--adaptive switches among single-tensor points (it can run their heads from the cached "
                        "segments), not cuts of several tensors such as {}: start it at --split K or auto".format(
                            o.split))
    if o.reprofile and o.split != "auto" and not o.adaptive:
        raise UserError("--reprofile measures again the profile that --split auto and --adaptive plan from; a run at "
                        "--split K re-measures a cached profile by itself when the run shows it stale")
    if o.follow and o.no_follow:
        raise UserError("--follow and --no-follow contradict each other; give one")
    if o.fallback not in ("none", "local"):
        raise UserError("--fallback must be none or local")
    if is_kserve(o.cloud):
        _check_kserve(o)


def _check_local(o):
    """What --split local (the whole model here, no cloud on the request path) cannot be combined with."""
    if o.adaptive:
        raise UserError("--adaptive switches between splits over a link; --split local uses none (give --split auto "
                        "--adaptive to let it choose)")
    if o.deadline_ms is not None or o.max_age_ms is not None:
        raise UserError("--deadline-ms and --max-age-ms hedge requests sent to the cloud; --split local sends none")


def _check_hedging(o):
    """What deadline hedging needs: one request on the link at a time, serve-cloud's connection."""
    for name, value in (("--deadline-ms", o.deadline_ms), ("--max-age-ms", o.max_age_ms)):
        if value is not None and value <= 0:
            raise UserError("{} must be positive (a budget in ms)".format(name))
    if o.max_age_ms is not None and not o.interval_ms:
        raise UserError("--max-age-ms is how long a frame may wait behind the link at a cadence: give --interval-ms")
    if o.stale not in ("local", "drop"):
        raise UserError("--stale must be local or drop")
    if o.inflight > 1:
        raise UserError("--deadline-ms and --max-age-ms keep one request on the link at a time: drop --inflight")
    if is_kserve(o.cloud):
        raise UserError("--deadline-ms and --max-age-ms need serve-cloud (a connection that outlives a late reply); "
                        "with a Triton --cloud give neither")


def _local_model(session, o):
    """The edge's own answer: for a hedged run, the tail of its bundle (fetched now if not cached) to finish late
    requests with, and for it and adaptive mode the whole model (the cache's, or the chain of every segment)."""
    whole = session.whole_model()
    local = LocalModel(whole[0] if whole is not None else None)
    if not hedging(o):
        return local
    session.add_local_tail(local)
    if not local.can_finish(session.manifest.bundle_id):
        raise UserError("--deadline-ms needs a way to finish a request on the edge: the tail of split {} (only in "
                        "{} here) or the whole model in {} (`run-edge --split 22` once fetches it)".format(
                            session.manifest.split_index, ", ".join(sorted(session.manifest.part("tail")["files"])),
                            o.cache))
    return local


def _check_kserve(o):
    """What a run against Triton cannot do: planning needs serve-cloud's profiles and probes, TLS and tokens
    its handshake."""
    if o.split == "auto" or o.adaptive:
        raise UserError("--split auto and --adaptive need serve-cloud (its profiles and echo probes); with a Triton "
                        "--cloud give --split K")
    if o.security is not None and (o.security.context is not None or o.security.token):
        raise UserError("--tls and --token are serve-cloud's; put a TLS-terminating balancer in front of Triton")


def _full_model(o):
    """The full model's bundle for ``--fallback local`` (None without it)."""
    return full_model(o.cache, o.model, o.backend, "--fallback local") if o.fallback == "local" else None


def _check_frame_size(manifest, welcome, o):
    """Refuse, before the first request, a batch whose boundary the cloud's frame limit would refuse."""
    limit = (welcome or {}).get("max_frame_bytes")
    if not isinstance(limit, int) or o.compress != "none" or o.codec != "none" or manifest.part("head") is None:
        return
    nbytes = manifest["boundary"]["bytes_per_sample"] * o.batch_size
    if nbytes > limit:
        count = len(manifest.boundaries)
        raise UserError("split {}: {} of --batch-size {} {} {:.2f} MiB, over the cloud's frame limit of {:.2f} MiB; "
                        "start serve-cloud with a larger --max-frame-mb, compress (--compress int8), lower "
                        "--batch-size, or choose a cut with fewer bytes (`cli.py layers --max-tensors K`)".format(
                            manifest.split_index, "the {} tensors".format(count) if count > 1 else "the boundary",
                            o.batch_size, "take" if count > 1 else "takes", nbytes / 1048576.0, limit / 1048576.0))


def _plan(session, o):
    """For ``--split auto`` and ``--adaptive``: (the plan made, the adaptive planner or None, the split to start at)."""
    if o.split != "auto" and not o.adaptive:
        return None, None, o.split
    from runtime.edge.adaptive import AdaptivePlanner
    from runtime.edge.plan import make_plan
    profiles = {}
    # adaptive mode switches among single-tensor points (the segments' chain can run any of their heads)
    rows, choice, network = make_plan(session, o, profiles=profiles, cuts=not o.adaptive)
    planned = {"choice": choice, "network": network, "objective": o.objective}
    split = o.split
    if split == "auto":
        split = choice["split"]
        say("planned split {} ({}): predicted {:.3f} ms{}{} at {:.1f} Mbit/s, rtt {:.3f} ms".format(
            split, choice["name"], choice["latency_ms"], _spread(choice, network), "" if choice.get("mj_per_sample")
            is None else ", {:.3f} mJ/sample".format(choice["mj_per_sample"]), network["bandwidth_mbps"],
            network["rtt_ms"]))
    adapter = None
    if o.adaptive:
        adapter = AdaptivePlanner(profiles["edge"], profiles["cloud"], network, o.batch_size, o.objective,
                                  interval_ms=o.interval_ms)
        adapter.deadline_ms = o.deadline_ms
        if split == LOCAL:  # adaptive mode starts at local, its connection bound to the best split for the way back
            from runtime.edge.planner import choose
            adapter.start_local = True
            split = choose([r for r in rows if r["split"] != LOCAL], o.objective, o.max_latency_ms)["split"]
    return planned, adapter, split


def _spread(choice, network):
    """The choice's expected and p95 latency where the link is known by several samples (--link-profile)."""
    if len(network.get("samples_mbps") or ()) < 2 or choice.get("expected_ms") is None:
        return ""
    return " (expected {:.3f} ms, p95 {:.3f} ms over {} samples)".format(choice["expected_ms"], choice["p95_ms"],
                                                                       len(network["samples_mbps"]))


def _run_info(o, session, manifest, data, recorder, planned, adapter):
    """The report's description of the run: what ran where, and what adaptive mode and the busy poll did."""
    welcome = session.welcome
    spin = session.conn.spin
    return {"model": manifest.model_id, "split": session.split_label, "bundle_id": manifest.bundle_id,
            "backend": session.head.name, "provider": session.head.provider,
            "cloud_backend": welcome.get("backend"), "cloud_provider": welcome.get("provider"),
            "dataset": data.name, "batch_size": o.batch_size, "inflight": o.inflight,
            "compress": o.compress, "codec": o.codec, "busy_poll": session.conn.busy_poll,
            "random_init": manifest["model"]["weights"]["random_init"],
            "fetches": session.fetches, "chained_heads": session.chained, "switches": recorder.switches,
            "plan": planned, "probes": adapter.probes if adapter is not None else 0,
            "stalls": adapter.stalls if adapter is not None else 0,
            "compute_scales": {"edge": adapter.edge_scale, "cloud": adapter.cloud_scale} if adapter else None,
            "head_load_ms": adapter.load_ms if adapter is not None else None,
            "busy_poll_spins": spin.spins, "busy_poll_starved": spin.starved, "busy_poll_missed": spin.missed}
