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
from runtime.edge.cadence import Cadence
from runtime.edge.client import CloudConnection
from runtime.edge.data import batches, open_dataset
from runtime.edge.measure import measure
from runtime.edge.report import _say, format_report, write_report
from runtime.edge.session import EdgeSession, find_full_model
from runtime.errors import UserError


def print_status(cloud, timeout=10.0, security=None, out=None):
    """The status command: the server's counters as JSON."""
    import json
    conn = CloudConnection(cloud, timeout, security=security)
    try:
        (out or sys.stdout).write(json.dumps(conn.status(), indent=1, sort_keys=True) + "\n")
    finally:
        conn.close()


def run_edge(cloud, model="resnet50", split=None, cache="artifacts", backend="onnx", device="auto",
             dataset="cifar100", data_dir="data", limit=100, batch_size=1, shuffle=False, seed=0, warmup=3,
             verbose=False, report=None, timeout=30.0, threads=0, cache_keep=8, follow=True, out=None,
             plan_options=None, adaptive=False, inflight=1, compress="none", codec="none", busy_poll=True,
             reconnect_s=60.0, fallback="none", security=None, interval_ms=0.0, start_at=None):
    """The run-edge command.  Returns the report dict; prints the seed's report to ``out``."""
    out = out or sys.stdout
    if batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if inflight < 1:
        raise UserError("--inflight must be at least 1")
    if adaptive and inflight > 1:
        raise UserError("--adaptive needs --inflight 1: pipelined round trips include the wait behind earlier "
                        "requests, which would read as a slow link")
    # busy polling only where one thread waits for one reply: a spinning receiver thread would hold the GIL
    if fallback not in ("none", "local"):
        raise UserError("--fallback must be none or local")
    full = find_full_model(cache, model, backend) if fallback == "local" else None
    if fallback == "local" and full is None:
        raise UserError("--fallback local needs the full model of {} in {}: a bundle of its last split point, whose "
                        "tail is empty (resnet50: split 22; `cli.py layers` lists them); fetch it with one "
                        "`run-edge --split 22` or copy it there with `push --to`".format(model, cache))
    session = EdgeSession(cloud, model, cache, cache_keep, backend, device, threads, timeout, compress, codec,
                          busy_poll=busy_poll and inflight == 1, security=security)
    planned, adapter = None, None
    try:
        if split == "auto" or adaptive:
            from runtime.edge.adaptive import AdaptivePlanner
            from runtime.edge.plan import make_plan
            plan_options = plan_options or {}
            objective = plan_options.get("objective", "latency")
            profiles = {}
            rows, choice, network = make_plan(session, batch_size, plan_options.get("bandwidth"),
                                              plan_options.get("rtt"), objective, profiles=profiles,
                                              interval_ms=interval_ms)
            planned = {"choice": choice, "network": network, "objective": objective}
            if split == "auto":
                split = choice["split"]
                _say("planned split {} ({}): predicted {:.3f} ms at {:.1f} Mbit/s, rtt {:.3f} ms".format(
                    split, choice["name"], choice["latency_ms"], network["bandwidth_mbps"], network["rtt_ms"]))
            if adaptive:
                adapter = AdaptivePlanner(profiles["edge"], profiles["cloud"], network, batch_size, objective,
                                          interval_ms=interval_ms)
        manifest = session.switch_to(split=split)
        if adapter is not None:
            alternates = adapter.alternates(manifest.split_index)
            if alternates:
                _say("preloading the heads of split {} (the plan for a link 4x slower or faster)".format(
                    " and ".join(str(k) for k in alternates)))
                session.preload(alternates)
        num_classes = manifest["output"]["shape"][-1]
        data = open_dataset(dataset, manifest["input"], num_classes, limit=limit, seed=seed, data_dir=data_dir)
        plan = batches(data, batch_size, limit, shuffle, seed)
        if not plan:
            raise UserError("the dataset {} is empty".format(dataset))
        local = (lambda: (load_part(full, "head", backend, device, threads), full.bundle_id)) if full else None
        recorder = measure(session, data, plan, warmup, follow, verbose, out, adapter, inflight, reconnect_s, local,
                           Cadence(interval_ms, start_at))
    finally:
        session.close()

    summary = recorder.summary()
    out.write(format_report(summary, recorder.samples, len(plan), recorder.warmup_requests) + "\n")
    if recorder.switches:
        out.write("Switches: {}\n".format(", ".join("split {} -> {} after {} samples ({:.2f} s)".format(
            s["from_split"], s["to_split"], s["after_samples"], s["time_s"]) for s in recorder.switches)))
    welcome = session.welcome
    info = {"model": manifest.model_id, "split": manifest.split_index, "bundle_id": manifest.bundle_id,
            "backend": session.head.name, "provider": session.head.provider,
            "cloud_backend": welcome.get("backend"), "cloud_provider": welcome.get("provider"),
            "dataset": data.name, "batch_size": batch_size, "inflight": inflight,
            "compress": compress, "codec": codec, "busy_poll": session.conn.busy_poll, "random_init": manifest["model"]["weights"]["random_init"],
            "fetches": session.fetches, "chained_heads": session.chained, "switches": recorder.switches,
            "plan": planned, "probes": adapter.probes if adapter is not None else 0,
            "stalls": adapter.stalls if adapter is not None else 0,
            "compute_scales": {"edge": adapter.edge_scale, "cloud": adapter.cloud_scale} if adapter else None,
            "busy_poll_spins": session.conn.spin.spins, "busy_poll_starved": session.conn.spin.starved,
            "busy_poll_missed": session.conn.spin.missed}
    if report:
        return write_report(report, info, recorder)
    info.update(summary)
    return info
