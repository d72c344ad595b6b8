"""The run report: the seed's four lines, percentiles, throughput, and the JSON file.

Figures, per request (one batch; at ``--batch-size 1``, per sample as in the seed):

* edge         = head compute on the edge (the backend's run(), which waits for the device);
* cloud        = tail compute, measured by the server around its run() and sent back in the reply
                 (against Triton, which sends no timing back: the run's average from Triton's
                 per-model statistics, the same for every request; see ``edge/kserve.py``);
* queue        = time the request waited on the cloud for its batch to start (``serve-cloud
                 --max-batch``; 0 without dynamic batching), measured by the server (Triton:
                 the run's average, as cloud);
* transmission = wall time from sending the request to having the reply, minus cloud and
                 queue: both directions, framing, (de)serialisation, and with
                 ``--inflight N`` > 1 the wait behind the requests sent before it;
* end-to-end   = edge + transmission + cloud, i.e. head start to reply received;
* wait         = with ``--interval-ms`` (requests released at a camera's cadence,
                 runtime/cadence.py), the time from a request's release to its head's
                 start, when the requests before it kept the edge busy; 0 otherwise;
* from release = wait + end-to-end: what a user waiting for that frame sees.

Per run: throughput, bytes per sample, and the edge process's CPU time per sample
(user + system over the measured part, every thread: the head, compression, and
any spinning while waiting for replies; on a Jetson, what costs battery), and with a
power source (``run-edge --power``, ``edge/power.py``) the edge's energy per sample
above its idle baseline, last.

Python 3.6 syntax.
"""
import json
import os

import numpy as np

from runtime import values
from runtime.edge import scoring

FIGURES = ("edge_ms", "transmission_ms", "cloud_ms", "queue_ms", "end_to_end_ms", "wait_ms", "from_release_ms")
SEED_LINES = (("edge_ms", "Avg edge inference latency"), ("transmission_ms", "Avg transmission latency"),
              ("cloud_ms", "Avg cloud inference latency"))


class RunRecorder(object):
    """Collects one record per measured request; warm-up requests are only counted.  ``scorer`` (edge/scoring.py,
    default classification) turns each reply's output into the per-sample predictions and labels kept, and scores
    the run."""

    def __init__(self, scorer=None):
        self.scorer = scorer or scoring.Classification()
        self.records = {f: [] for f in FIGURES}
        self.predictions = []
        self.labels = []
        self.bundles = []   # per sample: the bundle id that served it
        self.served_by = []  # per sample: "cloud", or "local" (answered on the edge)
        self.paths = []      # per request in the figures: "cloud", "hedged" (finished on the edge after waiting for
        #                      the cloud) or "local" (answered on the edge, never sent), and why (None for the cloud)
        self.late_replies = 0  # replies that came after their request was answered on the edge (discarded)
        self.dropped = []    # samples dropped as stale (--max-age-ms with --stale drop), with their release (s)
        self.local_ms = []   # per request run on the edge alone by --fallback local (not in the figures above)
        self.fallback_samples = 0
        self.reconnects = []
        self.fallback = None
        self.switches = []
        self.timeline = []  # per request in the figures: (release time in s from the start, split)
        self.interval_ms = 0.0
        self.started_unix = None  # wall clock at the first release
        self.bytes_sent = 0
        self.bytes_received = 0
        self.warmup_requests = 0
        self.wall_s = 0.0
        self.cpu_s = 0.0  # the edge process's CPU time (user + system, all threads) over the measured part
        self.cloud_counted = None  # against Triton: {"requests", "executions"} its statistics counted
        self.energy = None  # run-edge --power: edge.power's summary (None: not asked for)
        self.planned = 0    # the samples the run was to answer
        self.stopped = None  # what stopped it before the last of them (KeyboardInterrupt, a UserError), if anything

    @property
    def partial_reason(self):
        """Why the run stopped before its last sample (None: it did not)."""
        if self.stopped is None:
            return None
        return "interrupted (SIGINT)" if isinstance(self.stopped, KeyboardInterrupt) else str(self.stopped)

    def apportion_cloud(self, compute_ms, queue_ms, counted):
        """Against Triton, which times no request in its reply: every request's cloud and queue figures become
        the run's averages from Triton's statistics, and its transmission its round trip minus those."""
        records = self.records
        for i, roundtrip_ms in enumerate(records["transmission_ms"]):  # cloud and queue were 0 until now
            records["cloud_ms"][i], records["queue_ms"][i] = compute_ms, queue_ms
            records["transmission_ms"][i] = max(roundtrip_ms - compute_ms - queue_ms, 0.0)
        self.cloud_counted = counted

    def add(self, times, output, labels, bytes_sent, bytes_received, bundle_id=None, path="cloud", reason=None):
        """One answered request: ``times`` holds its edge_ms, roundtrip_ms, cloud_ms, queue_ms and wait_ms,
        ``output`` is the model's output for its batch, ``labels`` its samples' labels; ``path`` and ``reason``
        say who answered it and why (edge/hedge.py).  Returns the per-sample (predictions, labels) kept."""
        edge_ms, roundtrip_ms, cloud_ms = times["edge_ms"], times["roundtrip_ms"], times["cloud_ms"]
        queue_ms, wait_ms = times.get("queue_ms", 0.0), times.get("wait_ms", 0.0)
        self.records["edge_ms"].append(edge_ms)
        self.records["wait_ms"].append(wait_ms)
        self.records["from_release_ms"].append(wait_ms + edge_ms + roundtrip_ms)
        self.records["cloud_ms"].append(cloud_ms)
        self.records["queue_ms"].append(queue_ms)
        self.records["transmission_ms"].append(max(roundtrip_ms - cloud_ms - queue_ms, 0.0))
        self.records["end_to_end_ms"].append(edge_ms + roundtrip_ms)
        self.bytes_sent += bytes_sent
        self.bytes_received += bytes_received
        self.paths.append((path, reason))
        return self._score(output, labels, bundle_id, "cloud" if path == "cloud" else "local")

    def drop(self, indices, release_s):
        """Samples dropped unanswered: stale frames under --stale drop."""
        self.dropped.extend((int(i), release_s) for i in indices)

    def add_local(self, ms, output, labels, bundle_id):
        """A request run by --fallback local once the cloud was given up on: counted in accuracy, kept out of the
        latencies."""
        self.local_ms.append(ms)
        predictions, kept = self._score(output, labels, bundle_id, "local")
        self.fallback_samples += len(kept)
        return predictions, kept

    def path_summary(self):
        """Per path that answered requests in the figures: requests, why (counts), latency from release."""
        out = {}
        released = self.records["from_release_ms"]
        for name in ("cloud", "hedged", "local"):
            chosen = [ms for (p, _), ms in zip(self.paths, released) if p == name]
            if not chosen:
                continue
            why = {}
            for p, reason in self.paths:
                if p == name and reason is not None:
                    why[reason] = why.get(reason, 0) + 1
            values = np.asarray(chosen, dtype=np.float64)
            out[name] = {"requests": len(chosen), "reasons": why, "mean_ms": float(values.mean()),
                         "p50_ms": float(np.percentile(values, 50)), "p99_ms": float(np.percentile(values, 99))}
        return out

    def _score(self, output, labels, bundle_id, served_by):
        # a model of several outputs is scored on its first (a segmentation model's "out", not its "aux"), a
        # detector's on its boxes, scores and labels together
        outputs = values.as_tuple(output)
        predictions, kept = self.scorer.add(outputs if self.scorer.whole_output else outputs[0], labels)
        self.predictions.extend(predictions)
        self.labels.extend(kept)
        self.bundles.extend([bundle_id] * len(kept))
        self.served_by.extend([served_by] * len(kept))
        return predictions, kept

    @property
    def samples(self):
        return len(self.predictions)

    @property
    def requests(self):
        """The requests answered: in the figures, and by --fallback local."""
        return len(self.paths) + len(self.local_ms)

    def summary(self):
        out = {}
        for f in FIGURES:
            values = np.asarray(self.records[f], dtype=np.float64)
            out[f] = {"mean": float(values.mean()) if values.size else 0.0,
                      "p50": float(np.percentile(values, 50)) if values.size else 0.0,
                      "p99": float(np.percentile(values, 99)) if values.size else 0.0}
        n = self.samples
        out["task"] = self.scorer.task
        out.update(self.scorer.summary())
        out["throughput_samples_per_s"] = n / self.wall_s if self.wall_s > 0 else 0.0
        out["bytes_sent_per_sample"] = self.bytes_sent / float(n) if n else 0.0
        out["bytes_received_per_sample"] = self.bytes_received / float(n) if n else 0.0
        out["edge_cpu_ms_per_sample"] = 1000.0 * self.cpu_s / n if n else 0.0
        out["local_samples"] = self.fallback_samples
        out["paths"] = self.path_summary()
        out["late_replies"] = self.late_replies
        out["dropped"] = len(self.dropped)
        local = np.asarray(self.local_ms, dtype=np.float64)
        out["local_ms"] = {"mean": float(local.mean()) if local.size else 0.0,
                           "p50": float(np.percentile(local, 50)) if local.size else 0.0}
        out["interval_ms"] = self.interval_ms
        out["reconnects"] = list(self.reconnects)
        out["fallback"] = self.fallback
        out["cloud_counted"] = self.cloud_counted
        out["partial"] = self.stopped is not None
        out["partial_reason"] = self.partial_reason
        out["samples_planned"] = self.planned
        if self.energy is not None:
            out["energy"] = self.energy
        return out


def format_report(summary, samples, requests, warmup, notes=()):
    """The seed's four lines, exactly, then the figures it did not have, the ``notes`` (``format_notes``) and the
    energy, last."""
    if summary.get("task") == "detection" and summary.get("map50") is None:
        lines = ["Accuracy: n/a (no ground-truth boxes in the dataset: give an npz with 'boxes' and 'y')"]
    else:
        lines = ["Accuracy: {:.2f}%".format(100.0 * summary["accuracy"])]
    for key, label in SEED_LINES:
        lines.append("{}: {:.3f} ms".format(label, summary[key]["mean"]))
    if summary.get("task") == "segmentation":
        lines.append("Mean IoU: {:.2f}% over {} classes present (Accuracy above: pixel accuracy)".format(
            100.0 * summary["miou"], summary["classes_present"]))
    if summary.get("task") == "detection":
        lines.append("Detections: {:.1f} per image{}".format(summary["detections_per_image"], "" if summary.get(
            "map50") is None else "; mAP@0.5 over {} classes with ground truth (Accuracy above)".format(
                summary["classes_with_truth"])))
    lines.append("Avg end-to-end latency: {:.3f} ms".format(summary["end_to_end_ms"]["mean"]))
    rows = [("edge_ms", "Edge"), ("transmission_ms", "Transmission"), ("cloud_ms", "Cloud")]
    if summary["queue_ms"]["p99"] > 0:
        rows.append(("queue_ms", "Cloud queue"))
    rows.append(("end_to_end_ms", "End-to-end"))
    if summary.get("interval_ms"):
        rows += [("wait_ms", "Wait"), ("from_release_ms", "From release")]
    for key, label in rows:
        lines.append("{:<13} p50 {:8.3f} ms   p99 {:8.3f} ms".format(label, summary[key]["p50"], summary[key]["p99"]))
    lines.append("Throughput: {:.1f} samples/s ({} samples in {} requests; {} warm-up requests excluded)".format(
        summary["throughput_samples_per_s"], samples, requests, warmup))
    if summary.get("interval_ms"):
        lines.append("Released every {:g} ms; wait and from-release count from each release".format(
            summary["interval_ms"]))
    lines.append("Bytes sent per sample: {:.0f}".format(summary["bytes_sent_per_sample"]))
    if summary.get("edge_cpu_ms_per_sample"):
        lines.append("Edge CPU time per sample: {:.3f} ms".format(summary["edge_cpu_ms_per_sample"]))
    counted = summary.get("cloud_counted")
    if counted:
        lines.append("Cloud and queue: run averages from Triton's statistics ({} requests in {} executions); "
                     "transmission per request is its round trip minus them".format(
                         counted["requests"], counted["executions"]))
    for r in summary.get("reconnects") or ():
        lines.append("Reconnected after {:.2f} s ({} attempts): {}".format(r["down_s"], r["attempts"], r["lost"]))
    lines += format_paths(summary)
    if summary.get("local_samples"):
        lines.append("Local fallback: {} samples ran on the edge alone, cloud unreachable (p50 {:.3f} ms each; "
                     "not in the figures above)".format(summary["local_samples"], summary["local_ms"]["p50"]))
    lines += notes
    if summary.get("energy"):
        lines.append(format_energy(summary["energy"]))
    if summary.get("partial"):
        lines.append("Partial run: {} of {} samples, then {}".format(samples, summary["samples_planned"],
                                                                      summary["partial_reason"]))
    return "\n".join(lines)


def format_notes(manifest, inflight):
    """What the figures above do not say of themselves: weights that were never trained, and transmission that
    counts the wait behind the requests sent before (``--inflight`` > 1)."""
    lines = []
    if manifest["model"]["weights"].get("random_init"):
        lines.append("Weights: random (the bundle was exported with --random-init): accuracy is at chance level")
    if inflight > 1:
        lines.append("Transmission includes queueing: with --inflight {} a request also waits behind the {} sent "
                     "before it".format(inflight, inflight - 1))
    return lines


PATH_WORDS = {"cloud": "by the cloud", "hedged": "finished on the edge after waiting for the cloud",
              "local": "on the edge, not sent"}


def format_paths(summary):
    """Who answered the requests, where any was answered on the edge: per path, how many, why, and their latency
    from release; late replies discarded and frames dropped."""
    paths = summary.get("paths") or {}
    if set(paths) <= {"cloud"} and not summary.get("dropped"):
        return []
    lines = []
    for name in ("cloud", "hedged", "local"):
        p = paths.get(name)
        if p:
            why = ", ".join("{} {}".format(r, n) for r, n in sorted(p["reasons"].items()))
            lines.append("Answered {}: {} requests{}, from release p50 {:.3f} ms, p99 {:.3f} ms".format(
                PATH_WORDS[name], p["requests"], " ({})".format(why) if why else "", p["p50_ms"], p["p99_ms"]))
    if summary.get("late_replies"):
        lines.append("Late replies discarded: {}".format(summary["late_replies"]))
    if summary.get("dropped"):
        lines.append("Dropped as stale: {} samples (--stale drop)".format(summary["dropped"]))
    return lines


def format_energy(energy):
    """The energy line: per sample above the idle baseline, average and idle power, and where it was read."""
    if not energy.get("measured"):
        return "energy: not measured ({})".format(energy.get("reason"))
    return "energy: {:.3f} mJ/sample, avg power {:.0f} mW (idle {:.0f} mW), source {} rail {}".format(
        energy["mj_per_sample"], energy["avg_power_mw"], energy["idle_power_mw"], energy["source"], energy["rail"])


def write_report(path, info, recorder):
    data = dict(info)
    data.update(recorder.summary())
    data["n"] = recorder.samples
    data["warmup_requests"] = recorder.warmup_requests
    data["wall_s"] = recorder.wall_s
    data["predictions"] = recorder.predictions
    data["labels"] = recorder.labels
    data["bundles"] = recorder.bundles
    data["served_by"] = recorder.served_by
    data["started_unix"] = recorder.started_unix
    data["dropped_samples"] = [i for i, _ in recorder.dropped]
    data["timeline"] = {"release_s": [t for t, _ in recorder.timeline], "split": [k for _, k in recorder.timeline],
                        "path": [p for p, _ in recorder.paths], "reason": [r for _, r in recorder.paths],
                        "from_release_ms": recorder.records["from_release_ms"],
                        "wait_ms": recorder.records["wait_ms"]}
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    return data
