"""The planner (runtime/edge/planner.py): predicted latency and throughput per split, pure (no torch, no sockets)."""
import pytest

from runtime.edge.planner import choose, predict
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
