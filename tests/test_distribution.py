"""The planner's expected latency and p95 over the link's samples (planner.distribution): hand-computed cases with
synthetic profiles, no sockets."""
import pytest

from runtime.edge.planner import (
    CV_COMPUTE,
    FRAME_BYTES,
    OBJECTIVES,
    at_cadence,
    best_baseline,
    choose,
    distribution,
    format_plan,
    objective_figure,
    predict,
    ratio_to,
)

# the 12 KiB input, a mid point, the logits; the edge does 40 + 40 ms, the cloud 10 + 10
POINTS = [{"name": "input", "bytes_per_sample": 12288}, {"name": "mid", "bytes_per_sample": 8192},
          {"name": "out", "bytes_per_sample": 400}]
EDGE_MS, CLOUD_MS = [40.0, 40.0], [10.0, 10.0]
WHOLE = 80.0


def rows():
    return predict(POINTS, EDGE_MS, CLOUD_MS, 1.0, 10.0, splits=[0, 1, 2, "local"])


def by_split(planned):
    return {r["split"]: r for r in planned}


def wire_ms(nbytes, mbps):
    """Both ways (no output bytes: the reply is its frame alone) at ``mbps``."""
    return (nbytes + 2 * FRAME_BYTES) * 8.0 / (mbps * 1000.0)


def test_two_samples_give_the_mean_and_the_worse_as_p95():
    planned = by_split(distribution(rows(), {"rtt_ms": 1.0, "samples_mbps": [1.0, 4.0]}))
    slow, fast = 20.0 + 1.0 + wire_ms(12288, 1.0), 20.0 + 1.0 + wire_ms(12288, 4.0)
    assert planned[0]["expected_ms"] == pytest.approx((slow + fast) / 2)
    assert planned[0]["p95_ms"] == pytest.approx(slow)  # of two equal weights the 95th percentile is the worse


def test_a_sample_past_the_edges_give_up_costs_the_give_up_time_plus_the_tail_here():
    # split 1: 40 ms here, 10 there; the tail here is 80 - 40 = 40 ms, so with D = 100 the edge gives up at 60 ms
    network = {"rtt_ms": 1.0, "samples_mbps": [1.0, 16.0]}
    planned = by_split(distribution(rows(), network, deadline=(100.0, WHOLE)))
    on_time = 40.0 + 10.0 + 1.0 + wire_ms(8192, 16.0)
    assert on_time < 60.0  # 55 ms: answered by the cloud; at 1 Mbit/s (117 ms) finished here at 60 + 40
    assert planned[1]["expected_ms"] == pytest.approx((100.0 + on_time) / 2) and planned[1]["p95_ms"] == 100.0
    # split 0: its tail here is the whole model (80 ms), so the edge gives up at 20 ms, before any reply comes
    # (27 ms at best): every sample costs 20 + 80 ms, the budget
    assert planned[0]["expected_ms"] == planned[0]["p95_ms"] == 100.0
    unhedged = by_split(distribution(rows(), network))
    assert unhedged[1]["p95_ms"] == pytest.approx(40.0 + 10.0 + 1.0 + wire_ms(8192, 1.0))


def test_local_has_no_network_term_and_is_never_hedged():
    planned = by_split(distribution(rows(), {"rtt_ms": 1.0, "samples_mbps": [0.1, 100.0]}, deadline=(50.0, WHOLE)))
    assert planned["local"]["expected_ms"] == planned["local"]["p95_ms"] == WHOLE


def test_one_bad_sample_in_ten_moves_p95_but_not_the_mean():
    network = {"rtt_ms": 1.0, "samples_mbps": [100.0] * 9 + [0.5]}
    planned = distribution(rows()[:3], network)  # the edge holds no whole model: no local row
    split0 = by_split(planned)[0]
    assert split0["p95_ms"] == pytest.approx(21.0 + wire_ms(12288, 0.5))  # 10th of 10: 90% < 95%
    assert choose(planned, "latency")["split"] == 0  # 22 ms nine times in ten, about 41 ms expected
    assert choose(planned, "p95")["split"] == 2  # the logits: 81 ms, and 89 ms on the bad sample
    assert "p95" in OBJECTIVES


def test_weights_count_a_sample_as_often_as_its_weight():
    weighted = by_split(distribution(rows(), {"rtt_ms": 1.0, "samples_mbps": [1.0, 4.0], "weights": [1.0, 3.0]}))
    repeated = by_split(distribution(rows(), {"rtt_ms": 1.0, "samples_mbps": [1.0, 4.0, 4.0, 4.0]}))
    for k in (0, 1, 2):
        assert weighted[k]["expected_ms"] == pytest.approx(repeated[k]["expected_ms"])
        assert weighted[k]["p95_ms"] == pytest.approx(repeated[k]["p95_ms"])


def test_at_a_cadence_the_samples_variance_makes_the_queue():
    planned = by_split(distribution(rows(), {"rtt_ms": 1.0, "samples_mbps": [1.0, 4.0]}, interval_ms=200.0))
    slow, fast = 21.0 + wire_ms(12288, 1.0), 21.0 + wire_ms(12288, 4.0)
    mean, var = (slow + fast) / 2, ((slow - fast) / 2) ** 2
    rho = mean / 200.0
    wait = rho / (1 - rho) * (var / mean ** 2 + CV_COMPUTE ** 2) / 2 * mean
    assert planned[0]["expected_ms"] == pytest.approx(mean + wait) == planned[0]["released_ms"]
    assert planned[0]["p95_ms"] == pytest.approx(slow + wait)
    tight = by_split(distribution(rows(), {"rtt_ms": 1.0, "samples_mbps": [1.0, 4.0]}, interval_ms=50.0))
    assert tight[0]["expected_ms"] is None and tight[0]["p95_ms"] is None  # 83 ms on average: cannot keep up


def test_one_sample_with_a_prior_deviation_is_the_single_rate_plan_at_a_cadence():
    single = at_cadence(rows(), 150.0, dev_us_per_bit=0.1)
    spread = distribution(rows(), {"rtt_ms": 1.0, "bandwidth_mbps": 10.0, "dev_us_per_bit": 0.1}, interval_ms=150.0)
    for a, b in zip(single, spread):
        assert (a["released_ms"] is None and b["expected_ms"] is None) or \
            a["released_ms"] == pytest.approx(b["expected_ms"])


def test_the_plan_shows_expected_and_p95_where_the_link_has_several_samples():
    network = {"rtt_ms": 1.0, "bandwidth_mbps": 50.25, "samples_mbps": [100.0] * 9 + [0.5], "source": "x.csv"}
    planned = distribution(rows()[:3], network)
    text = format_plan(planned, choose(planned, "p95"), network, "p95")
    assert "| expected ms | p95 ms |" in text and "10 samples" in text and "choice (p95): split 2" in text
    one = distribution(rows(), {"rtt_ms": 1.0, "bandwidth_mbps": 10.0})
    assert "p95 ms" not in format_plan(one, choose(one), {"rtt_ms": 1.0, "bandwidth_mbps": 10.0}, "latency")


def test_splits_are_compared_with_the_baselines_on_the_figure_the_objective_decides_on():
    """Over a link that is fast half the time and nearly down the other half, split 0's latency at the samples'
    mean rate beats local's, but its expected latency and p95 do not: the baseline and the ratios follow the
    objective's figure."""
    network = {"rtt_ms": 1.0, "bandwidth_mbps": 50.15, "samples_mbps": [100.0] * 5 + [0.3] * 5, "source": "x.csv"}
    planned = by_split(distribution(rows(), network))
    assert planned[0]["latency_ms"] < WHOLE < planned[0]["expected_ms"]
    assert best_baseline(list(planned.values()))["split"] == 0  # on the one rate
    for objective, figure in (("latency", "expected_ms"), ("p95", "p95_ms")):
        assert objective_figure(list(planned.values()), objective) == figure
        baseline = best_baseline(list(planned.values()), figure)
        assert baseline["split"] == "local"
        assert ratio_to(planned[1], baseline, figure) == pytest.approx(planned[1][figure] / WHOLE)
        text = format_plan(list(planned.values()), choose(list(planned.values()), objective), network, objective)
        assert "better baseline (local" in text.splitlines()[-1]
    assert objective_figure(rows()) == "latency_ms"  # one rate, no cadence: the request's own latency
