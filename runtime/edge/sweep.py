"""sweep: the seed's table, measured: a real run at each split over the same samples, beside the planner.

For each split, one connection binds to the cloud's bundle for that split (fetching
the head if needed), sends the first batch ``--warmup`` times, then runs every
sample and records edge / transmission / cloud / end-to-end latency (mean, p50,
p99), bytes per sample, throughput and accuracy.  When the cloud has a segments
bundle for the model, the planner's prediction for each split stands beside it.

Energy (``--power``, where a meter is found): each split's measured part is sampled
as run-edge samples it (runtime/edge/power.py: an idle baseline just before, then the
meter through the measured requests), so ``mj_per_sample`` is what the whole edge
spent above idle per sample at that split, compute, radio and waiting alike; beside
it ``predicted_mj`` is the planner's (the edge profile's energy per segment, profiled
with the same meter, plus ``--radio-nj-per-byte`` for the bytes).  On a wired or
loopback link the measured figure has no radio in it, so the two differ by the model's
radio share.

Split ``local`` (in the default ``--splits``) is the whole model run on the edge from
its cache (``session.find_full_model``: a bundle whose tail is empty), nothing sent:
its edge figure is the whole forward pass, transmission and cloud 0.  Where the cache
holds no whole model, the default sweep says how to get one and leaves the row out,
and ``--splits ...,local`` is refused.  Every row's end-to-end latency is also given
against the better baseline measured, split 0 or local (``vs best baseline``).

Output: a Markdown table on stdout, ``--out-csv``, and ``--out-png`` (matplotlib, optional
on the edge; a second panel of mJ/sample where energy was measured or predicted).

Python 3.6 syntax.
"""
import collections
import csv
import sys

from runtime.bundle.schema import LOCAL
from runtime.edge.console import say
from runtime.edge.data import batches, check_source, open_dataset
from runtime.edge.local import LocalSession
from runtime.edge.measure import measure
from runtime.edge.models import held as model_held
from runtime.edge.models import resolve as resolve_model
from runtime.edge.options import RunOptions
from runtime.edge.planner import best_baseline, ratio_to
from runtime.edge.points import cached_points, resolve_splits
from runtime.edge.session import EdgeSession, find_full_model
from runtime.errors import Interrupted, UserError, relayed
from runtime.wire.codec import RemoteError

COLUMNS = ("split", "edge_ms", "transmission_ms", "cloud_ms", "end_to_end_ms")
DEFAULT_SPLITS = (0, 3, 10, 16, 20, 22, LOCAL)  # the seed's, and the whole model on the edge


Swept = collections.namedtuple("Swept", "rows data failed stopped")


def sweep(session, options, splits, predictions=None, meter=None, full=None):
    """Measure each split in ``splits`` (``options``: SweepOptions), in that order: a ``Swept`` of the rows of measured
    (and predicted) figures, the dataset, the splits that failed with why (``failed``: (split, why) pairs) and what
    stopped the sweep (``stopped``: None, KeyboardInterrupt or a UserError).  A split the cloud refuses is left out
    and the sweep goes on; a split stopped mid-run (SIGINT, a cloud that stays away) ends it, the splits measured
    before it kept.  With ``meter`` (edge.power.open_meter, measured), each split's energy per sample above idle too;
    ``full``: the whole model's bundle in the edge's cache, which split ``local`` runs."""
    o = options
    rows, failed, data, plan = [], [], None, None
    for split in splits:
        try:
            manifest = full if split == LOCAL else session.switch_to(split=split)
            if data is None:
                data = _open_data(manifest, o)
                plan = batches(data, o.batch_size, o.limit)
            say("split {}: {} samples".format(split, sum(len(b) for b in plan)))
            recorder = measure(LocalSession(o, full) if split == LOCAL else session, data, plan,
                               RunOptions(warmup=o.warmup, no_follow=True), meter=meter)
        except RemoteError as exc:  # this split's refusal (not held, its export failed): the others go on
            failed.append((split, relayed(str(exc))))
            say("split {} failed: {}".format(split, failed[-1][1]))
            session.reopen()  # the cloud closes a connection once it refused a request on it
            continue
        except (KeyboardInterrupt, UserError) as exc:
            failed.append((split, "interrupted (SIGINT)" if isinstance(exc, KeyboardInterrupt) else str(exc)))
            return Swept(with_ratios(rows), data, failed, exc)
        if recorder.stopped is not None:
            failed.append((split, "stopped after {} of {} samples: {}".format(recorder.samples, recorder.planned,
                                                                              recorder.partial_reason)))
            return Swept(with_ratios(rows), data, failed, recorder.stopped)
        rows.append(_row(split, manifest, recorder.summary(), recorder, (predictions or {}).get(split)))
    return Swept(with_ratios(rows), data, failed, None)


def _open_data(manifest, o):
    scored = manifest.outputs[0]["shape"]
    return open_dataset(o.dataset, manifest["input"], scored[-1], limit=o.limit, seed=o.seed, data_dir=o.data_dir,
                        output_shape=scored)


def _row(split, manifest, summary, recorder, predicted):
    """One split's row: what was measured, and the planner's prediction beside it."""
    row = {"split": split, "name": "the whole model on the edge" if split == LOCAL else manifest["split"]["name"],
           "bundle_id": manifest.bundle_id, "accuracy": summary["accuracy"],
           "throughput_samples_per_s": summary["throughput_samples_per_s"],
           "bytes_per_sample": summary["bytes_sent_per_sample"]}
    for figure in COLUMNS[1:]:
        for stat in ("mean", "p50", "p99"):
            row["{}_{}".format(figure, stat)] = summary[figure][stat]
    row["predicted_ms"] = predicted["latency_ms"] if predicted else None
    energy = getattr(recorder, "energy", None) or {}
    row["mj_per_sample"] = energy.get("mj_per_sample")
    row["predicted_mj"] = predicted.get("mj_per_sample") if predicted else None
    return row


def with_ratios(rows):
    """``rows`` with ``vs_best_baseline``: the mean end-to-end latency over the better measured baseline's."""
    baseline = best_baseline(rows, "end_to_end_ms_mean")
    return [dict(r, vs_best_baseline=ratio_to(r, baseline, "end_to_end_ms_mean")) for r in rows]


def _has_energy(rows):
    return any(r.get("mj_per_sample") is not None or r.get("predicted_mj") is not None for r in rows)


def _figure(value):
    return "{:.3f}".format(value) if value is not None else "-"


def format_table(rows):
    """The seed's table (its four columns first), with the figures it did not have (mJ/sample, measured and
    predicted, where either is known)."""
    energy = _has_energy(rows)
    lines = ["| split | avg edge ms | avg transmission ms | avg cloud ms | accuracy | end-to-end ms (p50 / p99) "
             "| predicted ms | vs best baseline | bytes/sample | samples/s |" +
             (" mJ/sample (predicted) |" if energy else ""),
             "|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|" + (":---:|" if energy else "")]
    for r in rows:
        ratio = r.get("vs_best_baseline")
        lines.append("| {} | {:.3f} | {:.3f} | {:.3f} | {:.2f}% | {:.3f} ({:.3f} / {:.3f}) | {} | {} | {:.0f} | {:.1f} |{}"
                     .format(r["split"], r["edge_ms_mean"], r["transmission_ms_mean"], r["cloud_ms_mean"],
                             100 * r["accuracy"], r["end_to_end_ms_mean"], r["end_to_end_ms_p50"],
                             r["end_to_end_ms_p99"], _figure(r["predicted_ms"]),
                             "-" if ratio is None else "{:.2f}x".format(ratio), r["bytes_per_sample"],
                             r["throughput_samples_per_s"],
                             " {} ({}) |".format(_figure(r.get("mj_per_sample")), _figure(r.get("predicted_mj")))
                             if energy else ""))
    return "\n".join(lines)


def write_csv(path, rows):
    with open(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_png(path, rows, title):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("matplotlib is not installed here: no chart (pip install matplotlib)")
        return False
    energy = _has_energy(rows)
    width = max(6, 0.7 * len(rows) + 3)
    if energy:
        fig, (ax, ax_mj) = plt.subplots(2, 1, figsize=(width, 8), sharex=True)
    else:
        fig, ax = plt.subplots(figsize=(width, 4.5))
    _latency_panel(ax, rows)
    ax.set_title(title)
    if energy:
        _energy_panel(ax_mj, rows)
    (ax_mj if energy else ax).set_xlabel("split point")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _latency_panel(ax, rows):
    x = list(range(len(rows)))
    edge = [r["edge_ms_mean"] for r in rows]
    trans = [r["transmission_ms_mean"] for r in rows]
    cloud = [r["cloud_ms_mean"] for r in rows]
    ax.bar(x, edge, label="edge", color="#4c72b0")
    ax.bar(x, trans, bottom=edge, label="transmission", color="#dd8452")
    ax.bar(x, cloud, bottom=[e + t for e, t in zip(edge, trans)], label="cloud", color="#55a868")
    predicted = [(i, r["predicted_ms"]) for i, r in enumerate(rows) if r["predicted_ms"] is not None]
    if predicted:
        ax.plot([i for i, _ in predicted], [v for _, v in predicted], "kD", label="planner's prediction")
    _split_axis(ax, rows, "mean latency per request (ms)", 4)


def _energy_panel(ax, rows):
    """Edge energy per sample above idle: measured bars, the planner's predictions as markers."""
    measured = [(i, r["mj_per_sample"]) for i, r in enumerate(rows) if r.get("mj_per_sample") is not None]
    predicted = [(i, r["predicted_mj"]) for i, r in enumerate(rows) if r.get("predicted_mj") is not None]
    if measured:
        ax.bar([i for i, _ in measured], [v for _, v in measured], label="edge, measured", color="#8172b3")
    if predicted:
        ax.plot([i for i, _ in predicted], [v for _, v in predicted], "kD", label="planner's prediction")
    _split_axis(ax, rows, "edge energy per sample above idle (mJ)", 2)


def _split_axis(ax, rows, ylabel, legend_columns):
    """One tick per split, the y label, and the legend below the panel."""
    ax.set_xticks(list(range(len(rows))))
    ax.set_xticklabels([str(r["split"]) for r in rows])
    ax.set_ylabel(ylabel)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=legend_columns, frameon=False)


def _meter(options):
    """The meter each split's run is sampled with (None: energy not measured, said once)."""
    from runtime.edge.power import open_meter
    meter = open_meter(options.power, options.sysfs_root)
    if not meter.measured:
        if options.power != "none":
            say("energy not measured: {}".format(meter.reason))
        return None
    say("energy: {}".format(meter.describe()))
    return meter


def _local(o, model, splits):
    """The whole model's bundle in the edge's cache, for split ``local`` (None where it is not swept): where it is
    missing, a sweep that names local is refused and the default one goes on without it, both saying how to get
    it."""
    if LOCAL not in splits:
        return None
    full = find_full_model(o.cache, model, o.backend)
    if full is not None:
        return full
    how = ("the edge's cache {} holds no whole model of {} (a bundle of its last split point, whose tail is empty: "
           "resnet50's split 22; `cli.py layers` lists them): fetch it with one `run-edge --split LAST` or copy it "
           "there with `push --to`".format(o.cache, model))
    if o.splits:
        raise UserError("--splits local: " + how)
    say("no local row: " + how)
    return None


def _default_splits(o):
    """The seed's splits (``DEFAULT_SPLITS``) that ``o.model`` has, where the edge's cache says how many points it
    has (a model other than the seed's ResNet-50 may have fewer)."""
    count = cached_points(o.cache, o.model).count
    splits = [s for s in DEFAULT_SPLITS if s == LOCAL or count is None or s < count]
    if len(splits) < len(DEFAULT_SPLITS):
        say("{} has split points 0..{}: sweeping {} (give --splits for others)".format(
            o.model, count - 1, ",".join(map(str, splits))))
    return splits


def run_sweep(options, out=None):
    """The sweep command (``SweepOptions``): every split checked first, then measured; the table of those measured
    is printed (and written) even where some failed or the sweep was stopped, which then ends it with an error
    naming them."""
    o = options
    out = out or sys.stdout
    check_source(o.dataset, o.data_dir)
    model = resolve_model(o)
    # every split checked before anything is measured or exported
    splits = resolve_splits(o, list(o.splits) if o.splits else _default_splits(o), "--splits")
    full = _local(o, model, splits)
    if full is None and LOCAL in splits:
        splits.remove(LOCAL)
    meter = _meter(o)
    session = EdgeSession(o, busy_poll=True)
    try:
        swept = sweep(session, o, splits, _predictions(session, o, meter), meter, full)
    finally:
        session.close()
        if meter is not None:
            meter.close()
    if swept.rows:
        _write(swept, o, model, out)
    if swept.failed:
        raise _failure(swept, splits)
    return swept.rows


def _predictions(session, o, meter):
    """The planner's rows by split, or None where the cloud has no segments of the model to plan from."""
    from runtime.edge.plan import make_plan
    try:
        rows, _, network = make_plan(session, o, measure_energy=meter is not None)
    except RemoteError as exc:
        if exc.code != "no_segments" or not model_held(o):
            raise  # not even split bundles of the model anywhere: cli.py's models.refusals says which are
        say("no predictions: {}".format(exc))
        session.reopen()  # the cloud closes a connection once it refused a request on it
        return None
    say("planner: rtt {:.3f} ms, bandwidth {:.1f} Mbit/s".format(network["rtt_ms"], network["bandwidth_mbps"]))
    return {r["split"]: r for r in rows}


def _write(swept, o, model, out):
    """The table of the splits measured on ``out``, and in ``--out-csv`` and ``--out-png``."""
    rows, data = swept.rows, swept.data
    out.write(format_table(rows) + "\n")
    if o.csv_path:
        write_csv(o.csv_path, rows)
    if o.png_path:
        write_png(o.png_path, rows, "{}: {} ({} samples, batch {})".format(
            model, data.name, len(data) if o.limit is None else min(o.limit, len(data)), o.batch_size))


def _failure(swept, splits):
    """The one-line error of a sweep that did not measure every split: which failed and why, which were not reached,
    and which the table has."""
    failed = [split for split, _ in swept.failed]
    measured = [r["split"] for r in swept.rows]
    unreached = [s for s in splits if s not in failed and s not in measured]
    message = "; ".join("split {} failed: {}".format(split, why) for split, why in swept.failed)
    if unreached:
        message += "; not measured: split{} {}".format("" if len(unreached) == 1 else "s",
                                                      ", ".join(map(str, unreached)))
    message += "; {}".format("the table above has split{} {}".format(
        "" if len(measured) == 1 else "s", ", ".join(map(str, measured))) if measured else "no split was measured")
    return (Interrupted if isinstance(swept.stopped, KeyboardInterrupt) else UserError)("sweep: " + message)
