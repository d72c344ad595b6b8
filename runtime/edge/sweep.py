"""sweep: the seed's table, measured: a real run at each split over the same samples, beside the planner.

For each split, one connection binds to the cloud's bundle for that split (fetching
the head if needed), sends the first batch ``--warmup`` times, then runs every
sample and records edge / transmission / cloud / end-to-end latency (mean, p50,
p99), bytes per sample, throughput and accuracy.  When the cloud has a segments
bundle for the model, the planner's prediction for each split stands beside it.
Output: a Markdown table on stdout, ``--csv``, and ``--png`` (matplotlib, optional
on the edge).

Python 3.6 syntax.
"""
import csv
import sys

from runtime.edge.data import batches, check_source, open_dataset
from runtime.edge.measure import measure
from runtime.edge.options import RunOptions
from runtime.edge.session import EdgeSession
from runtime.errors import UserError
from runtime.wire.codec import RemoteError

COLUMNS = ("split", "edge_ms", "transmission_ms", "cloud_ms", "end_to_end_ms")


def _say(message):
    sys.stderr.write("sweep: {}\n".format(message))
    sys.stderr.flush()


def sweep(session, options, predictions=None):
    """Rows of measured (and predicted) figures, one per split in ``options.splits`` (SweepOptions)."""
    o = options
    dataset, data_dir, limit, batch_size, seed, warmup = o.dataset, o.data_dir, o.limit, o.batch_size, o.seed, o.warmup
    rows, data, plan = [], None, None
    for split in o.splits:
        manifest = session.switch_to(split=split)
        if data is None:
            data = open_dataset(dataset, manifest["input"], manifest["output"]["shape"][-1], limit=limit, seed=seed,
                                data_dir=data_dir)
            plan = batches(data, batch_size, limit)
        _say("split {}: {} samples".format(split, sum(len(b) for b in plan)))
        summary = measure(session, data, plan, RunOptions(warmup=warmup, no_follow=True)).summary()
        row = {"split": split, "name": manifest["split"]["name"], "bundle_id": manifest.bundle_id,
               "accuracy": summary["accuracy"], "throughput_samples_per_s": summary["throughput_samples_per_s"],
               "bytes_per_sample": summary["bytes_sent_per_sample"]}
        for figure in COLUMNS[1:]:
            for stat in ("mean", "p50", "p99"):
                row["{}_{}".format(figure, stat)] = summary[figure][stat]
        predicted = (predictions or {}).get(split)
        row["predicted_ms"] = predicted["latency_ms"] if predicted else None
        rows.append(row)
    return rows, data


def format_table(rows):
    """The seed's table (its four columns first), with the figures it did not have."""
    lines = ["| split | avg edge ms | avg transmission ms | avg cloud ms | accuracy | end-to-end ms (p50 / p99) "
             "| predicted ms | bytes/sample | samples/s |",
             "|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|"]
    for r in rows:
        lines.append("| {} | {:.3f} | {:.3f} | {:.3f} | {:.2f}% | {:.3f} ({:.3f} / {:.3f}) | {} | {:.0f} | {:.1f} |".format(
            r["split"], r["edge_ms_mean"], r["transmission_ms_mean"], r["cloud_ms_mean"], 100 * r["accuracy"],
            r["end_to_end_ms_mean"], r["end_to_end_ms_p50"], r["end_to_end_ms_p99"],
            "{:.3f}".format(r["predicted_ms"]) if r["predicted_ms"] is not None else "-", r["bytes_per_sample"],
            r["throughput_samples_per_s"]))
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
        _say("matplotlib is not installed here: no chart (pip install matplotlib)")
        return False
    labels = [str(r["split"]) for r in rows]
    edge = [r["edge_ms_mean"] for r in rows]
    trans = [r["transmission_ms_mean"] for r in rows]
    cloud = [r["cloud_ms_mean"] for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(rows) + 3), 4.5))
    ax.bar(x, edge, label="edge", color="#4c72b0")
    ax.bar(x, trans, bottom=edge, label="transmission", color="#dd8452")
    ax.bar(x, cloud, bottom=[e + t for e, t in zip(edge, trans)], label="cloud", color="#55a868")
    predicted = [(i, r["predicted_ms"]) for i, r in enumerate(rows) if r["predicted_ms"] is not None]
    if predicted:
        ax.plot([i for i, _ in predicted], [v for _, v in predicted], "kD", label="planner's prediction")
    ax.set_xticks(list(x))
    ax.set_xticklabels(labels)
    ax.set_xlabel("split point")
    ax.set_ylabel("mean latency per request (ms)")
    ax.set_title(title)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=4, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def run_sweep(options, out=None):
    """The sweep command (``SweepOptions``)."""
    o = options
    out = out or sys.stdout
    splits, model, limit, batch_size = list(o.splits), o.model, o.limit, o.batch_size
    if not splits:
        raise UserError("--splits needs at least one split, e.g. 0,3,10,16,20,22")
    check_source(o.dataset)
    session = EdgeSession(o, busy_poll=True)
    try:
        predictions = None
        try:
            from runtime.edge.plan import make_plan
            rows, _, network = make_plan(session, o)
            predictions = {r["split"]: r for r in rows}
            _say("planner: rtt {:.3f} ms, bandwidth {:.1f} Mbit/s".format(network["rtt_ms"],
                                                                         network["bandwidth_mbps"]))
        except RemoteError as exc:
            if exc.code != "no_segments":
                raise
            _say("no predictions: {}".format(exc))
        rows, data = sweep(session, o, predictions)
    finally:
        session.close()
    out.write(format_table(rows) + "\n")
    if o.csv_path:
        write_csv(o.csv_path, rows)
    if o.png_path:
        write_png(o.png_path, rows, "{}: {} ({} samples, batch {})".format(model, data.name, len(data) if limit is None
                                                                          else min(limit, len(data)), batch_size))
    return rows
