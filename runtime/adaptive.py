"""Adaptive mode: re-plan during a run from the bandwidth the edge actually sees.

Each request tells how long its bytes took on the wire: transmission time minus
the round-trip time measured at start, for (request + reply) bytes.  Those give a
sample of time per byte; an exponentially weighted mean of time per byte smooths
them (averaging time per byte, not bandwidth, reacts within a request or two when
the link slows down, which is when a wrong split costs most).  After every batch
the planner predicts every split with the smoothed bandwidth; the edge switches
(with EdgeSession.switch_to, the hot-swap mechanism) only when another split is
predicted better than the current one by ``margin`` and at least ``hold`` batches
have passed since the last switch, so it does not flap.

Python 3.6 syntax.
"""
from .planner import choose, predict

ALPHA = 0.3        # weight of a new bandwidth sample
MARGIN = 0.15      # switch only for a predicted gain of 15% or more
HOLD = 5           # batches to stay on a split after switching
MIN_WIRE_MS = 0.2  # transfers shorter than this say too little about bandwidth
MIN_SAMPLE_BYTES = 4096  # nor do tiny ones: a token bucket or a socket buffer lets them through at line rate


class AdaptivePlanner(object):
    def __init__(self, edge, cloud, network, batch_size=1, objective="latency", margin=MARGIN, hold=HOLD):
        self.edge, self.cloud = edge, cloud
        self.rtt_ms = network["rtt_ms"]
        self.bandwidth_mbps = network["bandwidth_mbps"]
        self.batch_size = batch_size
        self.objective = objective
        self.margin = margin
        self.hold = hold
        self._since_switch = 0

    def observe(self, bytes_sent, bytes_received, transmission_ms):
        """Fold one request's transfer into the bandwidth estimate."""
        self._since_switch += 1
        wire_ms = transmission_ms - self.rtt_ms
        if wire_ms < MIN_WIRE_MS or bytes_sent + bytes_received < MIN_SAMPLE_BYTES:
            return
        us_per_bit = wire_ms * 1000.0 / ((bytes_sent + bytes_received) * 8.0)
        smoothed = (1 - ALPHA) / self.bandwidth_mbps + ALPHA * us_per_bit  # 1 / Mbit/s = microseconds per bit
        self.bandwidth_mbps = 1.0 / smoothed

    def rows(self):
        return predict(self.edge["points"], self.edge["segment_ms"], self.cloud["segment_ms"], self.rtt_ms,
                       self.bandwidth_mbps, self.batch_size, self.edge.get("output_bytes_per_sample", 0))

    def decide(self, current_split):
        """A better split and the reason, or (None, None)."""
        if self._since_switch < self.hold:
            return None, None
        rows = self.rows()
        best = choose(rows, self.objective)
        current = rows[current_split]
        if best["split"] == current_split:
            return None, None
        if self.objective == "latency":
            better = best["latency_ms"] < (1 - self.margin) * current["latency_ms"]
            gain = "{:.3f} ms instead of {:.3f} ms".format(best["latency_ms"], current["latency_ms"])
        else:
            better = best["throughput_samples_per_s"] > (1 + self.margin) * current["throughput_samples_per_s"]
            gain = "{:.1f} instead of {:.1f} samples/s".format(best["throughput_samples_per_s"],
                                                               current["throughput_samples_per_s"])
        if not better:
            return None, None
        self._since_switch = 0
        return best["split"], "bandwidth now {:.2f} Mbit/s: split {} predicted {}".format(
            self.bandwidth_mbps, best["split"], gain)

