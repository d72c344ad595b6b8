"""The planner (runtime/edge/planner.py): predicted latency and throughput per split, pure (no torch, no sockets)."""
import pytest

from runtime.bundle.schema import LOCAL, split_order
from runtime.edge.planner import (
    at_cadence,
    best_baseline,
    choose,
    format_plan,
    mark_served,
    predict,
    ratio_to,
    served_rows,
    with_cuts,
    with_energy,
)
from runtime.errors import UserError

# 5 points: the activation shrinks along the model, the edge is 10x slower than the cloud.
POINTS = [{"index": i, "name": "p{}".format(i), "bytes_per_sample": b}
          for i, b in enumerate([600000, 200000, 20000, 2000, 40])]
EDGE_MS = [2.0, 2.0, 4.0, 4.0]
CLOUD_MS = [0.2, 0.2, 0.4, 0.4]


def test_planner_moves_the_split_later_as_bandwidth_drops():
    def best(mbps):
        return choose(predict(POINTS, EDGE_MS, CLOUD_MS, rtt_ms=1.0, bandwidth_mbps=mbps, output_bytes=40))["split"]
    assert best(10000) == 0      # fast network: ship the input, the cloud is 10x faster
    assert best(50) == 2         # slower: compute until the activation is small
    assert best(1) == 4          # very slow: everything on the edge
    row = predict(POINTS, EDGE_MS, CLOUD_MS, 1.0, 8.0, output_bytes=40, splits=[2])[0]
    assert row["edge_ms"] == 4.0 and row["cloud_ms"] == pytest.approx(0.8)
    frame = 36 + 48  # the header and typical metadata
    assert row["network_ms"] == pytest.approx(1.0 + (20000 + frame + 40 + frame) / 1000.0)  # 8 Mbit/s = 1 byte/us
    assert row["latency_ms"] == row["edge_ms"] + row["network_ms"] + row["cloud_ms"]


def test_throughput_objective_takes_the_slowest_stage():
    rows = predict(POINTS, EDGE_MS, CLOUD_MS, 1.0, 100.0, batch_size=4, output_bytes=40)
    for r in rows:
        assert r["throughput_samples_per_s"] == pytest.approx(4000.0 / max(r["edge_ms"], r["network_ms"], r["cloud_ms"]))
    assert choose(rows, "throughput") == max(rows, key=lambda r: r["throughput_samples_per_s"])
    with pytest.raises(UserError):
        choose(rows, "energy")


# a cut of two tensors inside segment 1 (points 1 -> 2), three quarters of the way by FLOPs, sending fewer bytes
# than either point around it (DADS's case: a graph whose narrowest crossing is not a single tensor)
FLOPS = [0, 100, 500, 900, 1000]
POINTS_F = [dict(p, head_flops=f) for p, f in zip(POINTS, FLOPS)]
CUT = {"index": "1.1", "after": 1, "name": "two", "bytes_per_sample": 5000, "head_flops": 400,
       "tensors": [{"shape": [1000]}, {"shape": [250]}]}


def test_a_cut_of_several_tensors_is_predicted_from_its_share_of_its_segment():
    rows = predict(POINTS_F, EDGE_MS, CLOUD_MS, 1.0, 8.0, output_bytes=40, splits=with_cuts(POINTS_F, [CUT]))
    assert [r["split"] for r in rows] == [0, 1, "1.1", 2, 3, 4], "in split order"
    cut = rows[2]
    assert cut["share"] == pytest.approx(0.75) and "75% of segment 1" in cut["estimated"]
    assert cut["edge_ms"] == pytest.approx(2.0 + 0.75 * 2.0)
    assert cut["cloud_ms"] == pytest.approx(0.25 * 0.2 + 0.4 + 0.4)
    assert cut["bytes_per_sample"] == 5000
    assert not any("estimated" in r for r in rows if r is not cut)


def test_the_planner_chooses_a_cut_of_several_tensors_where_it_sends_least():
    rows = predict(POINTS_F, EDGE_MS, [0.0] * 4, 1.0, 10.0, output_bytes=40, splits=with_cuts(POINTS_F, [CUT]))
    # 10 Mbit/s: the cut sends 5000 bytes after 3.5 ms of edge compute (8.7 ms in all), point 3 2000 after 8 ms
    assert choose(rows)["split"] == "1.1"
    assert choose(predict(POINTS_F, EDGE_MS, [0.0] * 4, 1.0, 10.0, output_bytes=40))["split"] == 3  # without it
    assert choose(rows, "throughput")["split"] in {r["split"] for r in rows}


def test_a_cut_in_a_segment_of_no_flops_takes_half_of_it():
    flat = [dict(p, head_flops=0) for p in POINTS]
    row = predict(flat, EDGE_MS, CLOUD_MS, 1.0, 8.0, splits=with_cuts(flat, [dict(CUT, head_flops=0)]))[2]
    assert row["share"] == 0.5 and row["edge_ms"] == pytest.approx(3.0)


def test_local_is_the_whole_model_on_the_edge_with_nothing_on_the_request_path():
    rows = predict(POINTS, EDGE_MS, CLOUD_MS, 1.0, 8.0, batch_size=2, output_bytes=40, splits=[0, 4, LOCAL])
    assert [r["split"] for r in rows] == [0, 4, LOCAL]
    last, local = rows[1], rows[2]
    assert local["edge_ms"] == sum(EDGE_MS) == local["latency_ms"]
    assert local["network_ms"] == local["cloud_ms"] == local["bytes_per_sample"] == 0
    assert local["throughput_samples_per_s"] == pytest.approx(2 * 1000.0 / sum(EDGE_MS))
    # the last point is the whole model on the edge too, but with the round trip to the cloud
    assert last["edge_ms"] == local["edge_ms"] and last["network_ms"] > 1.0
    assert choose(predict(POINTS, EDGE_MS, CLOUD_MS, 1.0, 1.0, output_bytes=40, splits=[0, 4, LOCAL]))["split"] == LOCAL


def test_local_spends_no_radio_energy_and_does_not_queue_on_the_link():
    rows = predict(POINTS, EDGE_MS, CLOUD_MS, 1.0, 8.0, output_bytes=40, splits=[4, LOCAL])
    last, local = with_energy(rows, [1.0, 2.0, 3.0, 4.0], radio_nj_per_byte=1000.0, output_bytes=40)
    assert local["edge_mj"] == 10.0 and local["radio_mj"] == 0 and local["mj_per_sample"] == 10.0
    assert last["edge_mj"] == 10.0 and last["radio_mj"] > 0
    calm, jittery = (at_cadence(rows, 20.0, dev, output_bytes=40) for dev in (0.0, 5.0))
    assert jittery[1]["released_ms"] == calm[1]["released_ms"]  # no network term for local
    assert jittery[0]["released_ms"] > calm[0]["released_ms"]


def test_local_sorts_after_every_point_and_cut():
    assert sorted([LOCAL, 4, "1.1", 0], key=split_order) == [0, "1.1", 4, LOCAL]
    rows = predict(POINTS_F, EDGE_MS, CLOUD_MS, 1.0, 8.0, splits=[LOCAL] + with_cuts(POINTS_F, [CUT]))
    assert rows[-1]["split"] == LOCAL and rows[-2]["split"] == 4


def test_choose_takes_only_the_splits_that_can_run():
    rows = predict(POINTS, EDGE_MS, CLOUD_MS, 1.0, 1.0, output_bytes=40, splits=[0, 1, 2, 3, 4, LOCAL])
    assert choose(mark_served(rows, held=[0, 2], local=True))["split"] == LOCAL
    assert choose(mark_served(rows, held=[0, 2], local=False))["split"] == 2
    assert choose(mark_served(rows, held=[], on_demand=True))["split"] == 4
    assert choose(mark_served(rows, held=None))["split"] == 4  # a cloud that does not say: any point
    with pytest.raises(UserError) as err:
        choose(mark_served(rows, held=[]))
    assert "cli.py export --model the model --split 4" in str(err.value)  # the fastest the cloud could serve
    with pytest.raises(UserError) as err:
        served_rows(mark_served(rows, held=[]), "m")
    assert "--model m --split 4" in str(err.value) and "\n" not in str(err.value)


def test_the_plan_compares_every_split_with_the_better_baseline():
    rows = mark_served(predict(POINTS, EDGE_MS, CLOUD_MS, 1.0, 10000.0, output_bytes=40, splits=[0, 2, 4, LOCAL]),
                       held=[0, 4], local=True)
    baseline = best_baseline(rows)
    assert baseline["split"] == 0 and baseline["latency_ms"] < rows[-1]["latency_ms"]
    assert ratio_to(rows[2], baseline) == pytest.approx(rows[2]["latency_ms"] / rows[0]["latency_ms"])
    network = {"rtt_ms": 1.0, "bandwidth_mbps": 10000.0}
    table = format_plan(rows, choose(rows), network, "latency").splitlines()
    assert "vs best baseline" in table[1]
    assert table[3].startswith("| 0 |") and "| 1.00x |" in table[3] and "**<-**" in table[3]
    assert "not served" in table[4] and "not served" not in table[5]
    assert table[6].startswith("| local |")
    assert "it is the better baseline (split 0" in table[-1]
    other = rows[2]  # split 4, as another objective might choose
    line = format_plan(rows, other, network, "energy").splitlines()[-1]
    assert "{:.2f}x the better baseline (split 0".format(other["latency_ms"] / baseline["latency_ms"]) in line
