"""The planner: predicted end-to-end latency (or throughput) of every split, from measured profiles.

For split ``k`` at batch size ``B`` (figures per request):

    edge(k)     = sum of the edge's segment times before point k
    cloud(k)    = sum of the cloud's segment times from point k on
    network(k)  = rtt + (B * bytes(k) + frame) / bandwidth + (B * output bytes + frame) / bandwidth
    latency(k)  = edge(k) + network(k) + cloud(k)
    throughput  = B / max(edge(k), network(k), cloud(k))   (the three stages pipelined)

It works on any model's valid cut points: a model's points are those of its
segments bundle, whatever its graph looks like between them.

Cuts where several tensors cross (``"K.J"``, listed in a segments bundle exported
with ``--max-tensors``) lie inside segment K, which was timed whole.  Their compute
is estimated from the share of the segment's FLOPs before the cut,
``f = (flops(K.J) - flops(K)) / (flops(K + 1) - flops(K))`` (one half for a segment
of no FLOPs), and their bytes are those of all their tensors:

    edge(K.J)   = edge(K) + f * edge segment K
    cloud(K.J)  = (1 - f) * cloud segment K + cloud(K + 1)

Such rows say ``estimated``; ``sweep`` measures them for real.

Split ``"local"`` is the whole model on the edge with nothing on the request path
(no round trip, no cloud): edge = every segment's time, network = cloud = 0, no
bytes.  The last point is not that: its tail is empty, but the seed measures it
with the round trip to the cloud, and so does the planner.  The plan's two
baselines are split 0 (the whole model on the cloud) and local; ``best_baseline``
is the faster of them, and every ratio is also given against it.

Which splits can run (``mark_served``): those the cloud holds a bundle of, every
split where it exports on demand, and local where the edge holds the whole model;
``choose`` takes only those, and none is an error (``served_rows``).

At a cadence (``run-edge --interval-ms T``: a request released every T ms, one in
flight) a request also waits for the one before it, and that wait grows without
bound as the service time S = latency(k) approaches T.  ``at_cadence`` adds the
expected wait by Kingman's approximation for a queue with deterministic arrivals,

    wait(k)     = rho / (1 - rho) * cv(k)^2 / 2 * S,   rho = S / T,
    cv(k)^2     = (sd_network(k) / S)^2 + CV_COMPUTE^2,

where sd_network(k) is the deviation of the transfer time (the bytes at the
estimator's deviation of time per bit): a split that sends 12 KiB over a jittery
link queues, one that sends 400 bytes hardly does; and rho >= 1 is unstable
(``released_ms`` None).  ``choose`` then minimises the latency from release.

The link's distribution (``distribution``): the link is known by samples of its
throughput, s_1 .. s_n Mbit/s (a ``--link-profile`` trace's windows, adaptive mode's
recent transfers; one probe's rate is one sample), with weights w_i (equal, or
adaptive mode's forecast).  Each split's latency on sample i is

    L_i(k)      = edge(k) + cloud(k) + rtt + bits(k) / s_i       (bits both ways; local: edge only)

and under a deadline (``run-edge --deadline-ms D``: hedging gives up waiting when
finishing on the edge would only just meet D, and finishes there) a sample that
would come later costs the give-up time plus the edge's remaining compute,

    tail(k)     = whole(k) - edge(k)        (the edge profile's segments after the split)
    give_up(k)  = D - tail(k)
    L_i(k)      = max(give_up(k), edge(k)) + tail(k)    where L_i(k) > give_up(k)

    expected(k) = sum w_i L_i(k) / sum w_i
    p95(k)      = the least L_i(k) whose cumulative weight (in order of L) reaches 95%

At a cadence both are from release: Kingman's wait as above, with the service time's
variance the samples' own, var(k) = sum w_i (L_i(k) - expected(k))^2 / sum w_i
(so cv(k)^2 = var(k) / expected(k)^2 + CV_COMPUTE^2), is added to each.  Kingman
rather than a queue simulated over the sample sequence because adaptive mode's
samples are weighted and irregular in time (a transfer's, a probe's), so they have
no sequence to replay, and so that one sample with a prior deviation reduces to
``at_cadence`` exactly.  ``--objective latency`` minimises ``expected_ms``,
``--objective p95`` ``p95_ms``.

Energy (``--objective energy``; ``with_energy``): what the edge spends per sample,
from an edge profile that measured each segment's energy above idle (``segment_mj``,
``profile --power``) and a cost per byte on the radio:

    edge_mj(k)  = sum of the edge's segment_mj before point k
    radio_mj(k) = radio_nj_per_byte * ((B * bytes(k) + frame) + (B * output bytes + frame)) * 1e-6
    energy(k)   = (edge_mj(k) + radio_mj(k)) / B                       (mJ per sample)

The reply is counted at the same cost per byte as what is sent (an upper bound:
receiving costs less than sending in the radio models), and the radio's fixed costs
(waking up, the tail it stays awake after a transfer) are left out: every split
sends something each request, so they are the same for all and do not move the
choice.  The default cost is Huang et al.'s Wi-Fi model (MobiSys 2012) at 20 Mbit/s
up (``radio_cost``; docs/PLANNING.md has a table of links).  The energy objective
takes the split of least energy per sample (ties: the faster).  Any objective can be
capped, ``max_latency_ms``: only splits predicted within it (the latency from release
where a cadence is known) are candidates, and none within it is an error that says
the fastest split's prediction.

Python 3.6 syntax.
"""
from runtime.bundle.schema import LOCAL, split_order
from runtime.errors import UserError
from runtime.wire.codec import HEADER_SIZE

FRAME_BYTES = HEADER_SIZE + 48  # header and typical metadata of an INFER or RESULT frame
OBJECTIVES = ("latency", "p95", "throughput", "energy")
P95 = 0.95  # the percentile of --objective p95
CV_COMPUTE = 0.1  # the compute's own variation (a CPU quota's throttling, other work), as a coefficient

# Huang et al., "A close examination of performance and power characteristics of 4G LTE networks" (MobiSys 2012):
# power while sending at t Mbit/s, P = alpha * t + beta (mW); alpha in mW per Mbit/s, beta in mW
RADIO_MODELS = {"wifi": (283.17, 132.86), "lte": (438.39, 1288.04)}


def radio_cost(link, mbps):
    """nJ per byte sent over ``link`` (a RADIO_MODELS key) at ``mbps`` Mbit/s: 8 * P / t (mW / Mbit/s = nJ/bit)."""
    alpha, beta = RADIO_MODELS[link]
    return 8.0 * (alpha * mbps + beta) / mbps


DEFAULT_RADIO_NJ_PER_BYTE = round(radio_cost("wifi", 20.0), 1)  # 2318.5 nJ/byte: Wi-Fi at 20 Mbit/s up


def check_profiles(edge, cloud):
    if len(edge["segment_ms"]) != len(cloud["segment_ms"]) or \
            [p["bytes_per_sample"] for p in edge["points"]] != [p["bytes_per_sample"] for p in cloud["points"]]:
        raise UserError("the edge and cloud profiles are of different models or exports; profile both from the "
                        "same segments bundle")


def predict(points, edge_ms, cloud_ms, rtt_ms, bandwidth_mbps, batch_size=1, output_bytes=0, splits=None):
    """Predicted figures for each of ``splits`` (default: every point), in split order: point indices, cuts of
    several tensors (entries of a segments bundle's ``cuts``, see ``with_cuts``) and ``"local"``."""
    if len(edge_ms) != len(points) - 1 or len(cloud_ms) != len(points) - 1:
        raise UserError("profiles must have one time per segment ({} points)".format(len(points)))
    if bandwidth_mbps <= 0:
        raise UserError("bandwidth must be positive")
    ms_per_byte = 8.0 / (bandwidth_mbps * 1e6) * 1000.0
    rows = []
    wanted = [(k, None) if isinstance(k, int) or k == LOCAL else (k["after"], k)
              for k in (range(len(points)) if splits is None else splits)]
    for k, cut in wanted:
        if k == LOCAL:
            rows.append(local_row(edge_ms, batch_size))
            continue
        share = 0.0 if cut is None else head_share(cut, points)
        edge = float(sum(edge_ms[:k])) + (share * edge_ms[k] if share else 0.0)
        cloud = float(sum(cloud_ms[k:])) - (share * cloud_ms[k] if share else 0.0)
        where = points[k] if cut is None else cut
        up = batch_size * where["bytes_per_sample"] + FRAME_BYTES
        down = batch_size * output_bytes + FRAME_BYTES
        network = rtt_ms + (up + down) * ms_per_byte
        slowest = max(edge, network, cloud)
        row = {"split": k if cut is None else cut["index"], "name": where["name"],
               "bytes_per_sample": where["bytes_per_sample"], "edge_ms": edge, "network_ms": network,
               "cloud_ms": cloud, "latency_ms": edge + network + cloud,
               "throughput_samples_per_s": batch_size * 1000.0 / slowest if slowest > 0 else float("inf")}
        if cut is not None:
            row.update(after=k, share=share, estimated="compute: {:.0%} of segment {} by FLOPs".format(share, k))
        rows.append(row)
    return sorted(rows, key=lambda r: split_order(r["split"]))


def local_row(edge_ms, batch_size=1):
    """Split ``"local"``: every segment on the edge, nothing sent, no cloud."""
    edge = float(sum(edge_ms))
    return {"split": LOCAL, "name": "the whole model on the edge", "bytes_per_sample": 0, "edge_ms": edge,
            "network_ms": 0.0, "cloud_ms": 0.0, "latency_ms": edge,
            "throughput_samples_per_s": batch_size * 1000.0 / edge if edge > 0 else float("inf")}


def with_cuts(points, cuts):
    """Every point's index and the ``cuts`` that lie between points (``predict``'s ``splits``)."""
    return list(range(len(points))) + [c for c in cuts if 0 <= c["after"] < len(points) - 1]


def head_share(cut, points):
    """The share of segment K's FLOPs that lies before cut ``K.J`` (see the module's docstring)."""
    k = cut["after"]
    lo, hi = points[k].get("head_flops"), points[k + 1].get("head_flops")
    if lo is None or hi is None or cut.get("head_flops") is None or hi <= lo:
        return 0.5
    return min(1.0, max(0.0, (cut["head_flops"] - lo) / float(hi - lo)))


def at_cadence(rows, interval_ms, dev_us_per_bit=0.0, batch_size=1, output_bytes=0):
    """``rows`` with ``released_ms``: the expected latency from release at one request per ``interval_ms``
    (Kingman; see the module's docstring).  ``dev_us_per_bit``: the deviation of the link's time per bit."""
    out = []
    for r in rows:
        service = r["latency_ms"]
        sd_ms = _wire_bytes(r, batch_size, output_bytes) * 8.0 * dev_us_per_bit / 1000.0
        wait, rho = queue_wait(service, sd_ms ** 2, interval_ms)
        out.append(dict(r, released_ms=None if wait is None else service + wait, utilisation=rho))
    return out


def queue_wait(service_ms, network_var, interval_ms):
    """(Kingman's expected wait for deterministic arrivals every ``interval_ms``, or None where the queue only
    grows; the utilisation) for a mean service time ``service_ms`` whose network part varies by ``network_var``
    (ms squared) and whose compute by CV_COMPUTE."""
    rho = service_ms / interval_ms
    if rho >= 1.0:
        return None, rho
    cv2 = network_var / service_ms ** 2 + CV_COMPUTE ** 2 if service_ms > 0 else 0.0
    return rho / (1.0 - rho) * cv2 / 2.0 * service_ms, rho


def sample_latencies(row, samples_mbps, rtt_ms, wire_bytes):
    """``row``'s latency (ms) on each link sample: its edge and cloud time plus the round trip and its
    ``wire_bytes`` (both ways) at that sample's Mbit/s; local has no network term."""
    if row["split"] == LOCAL:
        return [row["latency_ms"]] * len(samples_mbps)
    compute = row["edge_ms"] + row["cloud_ms"]
    return [compute + rtt_ms + wire_bytes * 8.0 / (mbps * 1000.0) for mbps in samples_mbps]


def hedged(latencies, row, deadline_ms, whole_edge_ms):
    """``latencies`` under deadline hedging (hedge.py): the edge stops waiting at ``deadline_ms`` minus what
    finishing here takes (the split's tail on the edge, ``whole_edge_ms - edge_ms``), and a sample that would
    come later costs that give-up time (no sooner than the head is done) plus the tail.  Local is never hedged."""
    if row["split"] == LOCAL:
        return latencies
    remaining = max(whole_edge_ms - row["edge_ms"], 0.0)
    give_up = deadline_ms - remaining
    late = max(give_up, row["edge_ms"]) + remaining
    return [t if t <= give_up else late for t in latencies]


def weighted_summary(values, weights=None, share=P95):
    """(mean, ``share`` percentile, variance) of ``values`` under ``weights`` (default equal); the percentile is
    the nearest rank: the least value whose cumulative weight reaches ``share`` of the whole."""
    weights = [1.0] * len(values) if weights is None else weights
    total = float(sum(weights))
    mean = sum(v * w for v, w in zip(values, weights)) / total
    var = sum(w * (v - mean) ** 2 for v, w in zip(values, weights)) / total
    cumulative = 0.0
    for v, w in sorted(zip(values, weights)):
        cumulative += w
        if cumulative >= share * total - 1e-9:
            return mean, v, var
    return mean, max(values), var


def link_samples(network):
    """The link's throughput samples (Mbit/s) in a ``network`` dict: its ``samples_mbps``, else its one rate."""
    return network.get("samples_mbps") or [network["bandwidth_mbps"]]


def distribution(rows, network, batch_size=1, output_bytes=0, interval_ms=0.0, deadline=None):
    """``rows`` with ``expected_ms`` and ``p95_ms``: the mean and 95th percentile of each split's latency over the
    link's samples (``network``: ``rtt_ms``, ``samples_mbps`` or one ``bandwidth_mbps``, optional ``weights``,
    default equal; see the module's docstring), hedged under ``deadline`` (deadline_ms, the whole model's time on
    the edge), if given.  At a cadence (``interval_ms``) both are from release: Kingman's wait, from the
    samples' variance (plus that of ``network``'s ``dev_us_per_bit``, a prior for a link known by one sample),
    is added to each; ``released_ms`` is the expected figure, None (with both) where the queue only grows."""
    samples, weights = link_samples(network), network.get("weights")
    out = []
    for r in rows:
        wire = _wire_bytes(r, batch_size, output_bytes)
        latencies = sample_latencies(r, samples, network["rtt_ms"], wire)
        if deadline is not None:
            latencies = hedged(latencies, r, *deadline)
        mean, p95, var = weighted_summary(latencies, weights)
        row = dict(r, expected_ms=mean, p95_ms=p95)
        if interval_ms:
            var += (wire * 8.0 * network.get("dev_us_per_bit", 0.0) / 1000.0) ** 2
            wait, rho = queue_wait(mean, var, interval_ms)
            row.update(expected_ms=None if wait is None else mean + wait, p95_ms=None if wait is None else p95 + wait,
                       utilisation=rho)
            row["released_ms"] = row["expected_ms"]
        out.append(row)
    return out


def _wire_bytes(row, batch_size, output_bytes):
    """The bytes a request at ``row``'s split puts on the link, both ways (none for local)."""
    if row["split"] == LOCAL:
        return 0
    return batch_size * (row["bytes_per_sample"] + output_bytes) + 2 * FRAME_BYTES


def latency_key(row, objective="latency"):
    """What the latency objectives minimise: ``p95_ms`` for ``"p95"`` and ``expected_ms`` otherwise where the
    link's distribution is known, else the latency from release where a cadence is known, else the request's
    own latency; a queue that only grows is infinite (and among such rows, the fastest)."""
    for figure in (("p95_ms",) if objective == "p95" else ()) + ("expected_ms", "released_ms"):
        if figure in row:
            value = row[figure]
            return (float("inf") if value is None else value), row["latency_ms"]
    return row["latency_ms"], row["latency_ms"]


def has_energy(rows):
    return bool(rows) and all(r.get("mj_per_sample") is not None for r in rows)


def with_energy(rows, segment_mj, radio_nj_per_byte=DEFAULT_RADIO_NJ_PER_BYTE, batch_size=1, output_bytes=0):
    """``rows`` with ``edge_mj``, ``radio_mj``, ``energy_mj`` (per request) and ``mj_per_sample`` (see the module's
    docstring); ``segment_mj``: the edge's energy per run of each segment, at the profile's batch size."""
    if radio_nj_per_byte < 0:
        raise UserError("the radio's cost per byte cannot be negative")
    out = []
    for r in rows:
        k = len(segment_mj) if r["split"] == LOCAL else r.get("after", r["split"])
        edge = float(sum(segment_mj[:k])) + r.get("share", 0.0) * (segment_mj[k] if k < len(segment_mj) else 0.0)
        radio = radio_nj_per_byte * _wire_bytes(r, batch_size, output_bytes) * 1e-6
        out.append(dict(r, edge_mj=edge, radio_mj=radio, energy_mj=edge + radio,
                        mj_per_sample=(edge + radio) / batch_size))
    return out


def within_latency(rows, max_latency_ms=None):
    """The rows predicted within ``max_latency_ms`` (all without a cap); none is an error naming the fastest."""
    if max_latency_ms is None:
        return rows
    allowed = [r for r in rows if latency_key(r)[0] <= max_latency_ms]
    if not allowed:
        fastest = min(rows, key=lambda r: (latency_key(r), split_order(r["split"])))
        predicted = latency_key(fastest)[0]
        raise UserError("no split is predicted within --max-latency-ms {:g}: the fastest, split {}, is predicted at "
                        "{}; raise --max-latency-ms to at least that, or plan for another network (--bandwidth, "
                        "--rtt) or cadence".format(max_latency_ms, fastest["split"], "{:.3f} ms".format(predicted)
                                                   if predicted != float("inf") else "a queue that only grows"))
    return allowed


def mark_served(rows, held=None, on_demand=False, local=False):
    """``rows`` with ``served``: the cloud holds a bundle of the split (``held``, its STATUS's list; None where it
    does not say, so any split), or exports any on demand; ``"local"`` where the edge holds the whole model."""
    return [dict(r, served=local if r["split"] == LOCAL else (on_demand or held is None or r["split"] in held))
            for r in rows]


def served_rows(rows, model="the model"):
    """The rows that can run (all without ``served`` marks); none is an error saying what to export."""
    served = [r for r in rows if r.get("served", True)]
    if not served:
        fastest = min((r for r in rows if r["split"] != LOCAL), key=lambda r: (latency_key(r), split_order(r["split"])))
        raise UserError("the cloud serves no split of {0} (it holds none the plan considers and exports none on "
                        "demand) and the edge holds no whole model of it; export one on the cloud, e.g. the fastest "
                        "predicted: `cli.py export --model {0} --split {1}`, or start serve-cloud with --model {0} to "
                        "export them on demand".format(model, fastest["split"]))
    return served


def objective_figure(rows, objective="latency"):
    """The figure of ``rows`` that ``objective`` is decided on (as ``latency_key``), for comparing rows with it."""
    for figure in (("p95_ms",) if objective == "p95" else ()) + ("expected_ms", "released_ms"):
        if rows and all(figure in r for r in rows):
            return figure
    return "latency_ms"


def best_baseline(rows, figure="latency_ms"):
    """The better baseline among ``rows``: split 0 (the whole model on the cloud) or ``"local"`` (the whole model on
    the edge), whichever has the least ``figure``; None where neither is there."""
    baselines = [r for r in rows if r["split"] in (0, LOCAL) and r.get(figure) is not None]
    return min(baselines, key=lambda r: r[figure]) if baselines else None


def ratio_to(row, baseline, figure="latency_ms"):
    """``row``'s ``figure`` over the baseline's (None without a baseline, or one of 0)."""
    if baseline is None or not baseline[figure] or row.get(figure) is None:
        return None
    return row[figure] / baseline[figure]


def choose(rows, objective="latency", max_latency_ms=None):
    """The split ``objective`` picks among the served ``rows`` (those within ``max_latency_ms``, if given)."""
    if objective not in OBJECTIVES:
        raise UserError("unknown objective {!r}; choose from {}".format(objective, ", ".join(OBJECTIVES)))
    if objective == "energy" and not has_energy(rows):
        raise UserError("--objective energy needs the edge's energy per segment (an edge profile made with "
                        "`cli.py profile --power ...`)")
    rows = within_latency(served_rows(rows), max_latency_ms)
    if objective in ("latency", "p95"):
        return min(rows, key=lambda r: (latency_key(r, objective), split_order(r["split"])))
    if objective == "energy":
        return min(rows, key=lambda r: (r["mj_per_sample"], latency_key(r), split_order(r["split"])))
    return max(rows, key=lambda r: (r["throughput_samples_per_s"], tuple(-v for v in split_order(r["split"]))))


def format_plan(rows, choice, network, objective, radio_nj_per_byte=None):
    """The plan as a Markdown table (expected and p95 columns where the link is known by several samples, an
    mJ/sample column where the edge's energy is known, each latency against the better baseline, splits that
    cannot run marked) and the choice."""
    energy = has_energy(rows)
    spread = len(network.get("samples_mbps") or ()) > 1
    figure = objective_figure(rows, objective)
    baseline = best_baseline(rows, figure)
    lines = ["network: rtt {:.3f} ms, bandwidth {:.1f} Mbit/s ({})".format(
        network["rtt_ms"], network["bandwidth_mbps"], network.get("source", "given"))]
    if spread:
        lines.append("link: {} samples, {:.2f} to {:.2f} Mbit/s; latency ms at their mean rate, expected ms and p95 "
                     "ms over them".format(len(network["samples_mbps"]), min(network["samples_mbps"]),
                                           max(network["samples_mbps"])))
    if energy and radio_nj_per_byte is not None:
        lines.append("energy: the edge's measured energy per segment, radio {:g} nJ/byte".format(radio_nj_per_byte))
    lines += ["| split | after | bytes/sample | edge ms | network ms | cloud ms | latency ms |" +
              (" expected ms | p95 ms |" if spread else "") + " vs best baseline | samples/s |" +
              (" mJ/sample |" if energy else ""),
              "|---:|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if spread else "") + "---:|---:|" +
              ("---:|" if energy else "")]
    for r in rows:
        mark = " **<-**" if r["split"] == choice["split"] else (" not served" if not r.get("served", True) else "")
        lines.append("| {} | {} | {} | {:.3f} | {:.3f} | {:.3f} | {:.3f} |{} {} | {:.1f} |{}{}".format(
            r["split"], r["name"], r["bytes_per_sample"], r["edge_ms"], r["network_ms"], r["cloud_ms"],
            r["latency_ms"], " {} | {} |".format(_ms(r["expected_ms"]), _ms(r["p95_ms"])) if spread else "",
            _times(ratio_to(r, baseline, figure)), r["throughput_samples_per_s"],
            " {:.3f} |".format(r["mj_per_sample"]) if energy else "", mark))
    if any(r.get("estimated") for r in rows):
        lines.append("splits K.J: cuts of several tensors, their compute estimated from the FLOPs share of the "
                     "segment they lie in (`sweep --splits` measures them)")
    if not all(r.get("served", True) for r in rows):
        lines.append("not served: the cloud holds no bundle of that split and exports none on demand (local: the "
                     "edge's cache holds no whole model), so it is not chosen")
    lines.append("choice ({}): split {} ({}), predicted latency {:.3f} ms{}, {:.1f} samples/s{}{}".format(
        objective, choice["split"], choice["name"], choice["latency_ms"],
        ", expected {}, p95 {}".format(_ms(choice["expected_ms"]), _ms(choice["p95_ms"])) if spread else "",
        choice["throughput_samples_per_s"], ", {:.3f} mJ/sample".format(choice["mj_per_sample"]) if energy else "",
        _against(choice, baseline, figure)))
    return "\n".join(lines)


def _ms(value):
    return "-" if value is None else "{:.3f}".format(value)


def _times(ratio):
    return "-" if ratio is None else "{:.2f}x".format(ratio)


def _against(choice, baseline, figure):
    """How the choice's ``figure`` compares with the better baseline's, for the choice line."""
    if baseline is None:
        return ""
    if baseline["split"] == choice["split"]:
        return "; it is the better baseline ({})".format(_baseline_name(baseline))
    return "; {} the better baseline ({}, {:.3f} ms{})".format(
        _times(ratio_to(choice, baseline, figure)), _baseline_name(baseline), baseline[figure],
        "" if figure == "latency_ms" else " " + figure[:-3].replace("_", " "))


def _baseline_name(row):
    return "local: the whole model on the edge" if row["split"] == LOCAL else "split 0: the whole model on the cloud"
