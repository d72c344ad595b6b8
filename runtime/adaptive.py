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

At late splits the requests are too small to show the bandwidth (a token bucket
lets a few KiB through at line rate), so a link that has recovered would go
unnoticed: when no request has given a sample for ``PROBE_AFTER_S``, the edge
sends one ECHO probe sized to take about ``PROBE_MS`` at the current estimate
(at least 32 KiB each way, past a token bucket's burst).  A probe is a deliberate
measurement, so it weighs more than a request (``PROBE_ALPHA``); on a slow link a
probe is expensive, so the next one waits at least ``PROBE_COST_SHARE``
times as long as the last one took (probing costs at most 5% of the run).

Python 3.6 syntax.
"""
import time

from .planner import choose, predict

ALPHA = 0.3        # weight of a new bandwidth sample
MARGIN = 0.15      # switch only for a predicted gain of 15% or more
HOLD = 5           # batches to stay on a split after switching
MIN_WIRE_MS = 0.2  # transfers shorter than this say too little about bandwidth
MIN_SAMPLE_BYTES = 4096  # nor do tiny ones: a token bucket or a socket buffer lets them through at line rate
PROBE_AFTER_S = 2.0     # seconds without a sample before an ECHO probe ...
PROBE_COST_SHARE = 20   # ... and at least this many times the last probe's duration
PROBE_ALPHA = 0.6       # weight of a probe's sample
PROBE_MS = 25.0         # a probe's size: about this long at the estimated bandwidth ...
PROBE_BYTES = (32768, 1 << 20)  # ... within these bounds (each way)


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
        self._last_sample = time.time()
        self._probe_wait_s = PROBE_AFTER_S
        self.probes = 0

    def observe(self, bytes_sent, bytes_received, transmission_ms, probe=False):
        """Fold one transfer (a request's, or with ``probe`` an ECHO probe's) into the bandwidth estimate."""
        if probe:
            self._probe_wait_s = max(PROBE_AFTER_S, PROBE_COST_SHARE * transmission_ms / 1000.0)
        else:
            self._since_switch += 1
        wire_ms = transmission_ms - self.rtt_ms
        if wire_ms < MIN_WIRE_MS or bytes_sent + bytes_received < MIN_SAMPLE_BYTES:
            return
        self._last_sample = time.time()
        us_per_bit = wire_ms * 1000.0 / ((bytes_sent + bytes_received) * 8.0)
        alpha = PROBE_ALPHA if probe else ALPHA
        smoothed = (1 - alpha) / self.bandwidth_mbps + alpha * us_per_bit  # 1 / Mbit/s = microseconds per bit
        self.bandwidth_mbps = 1.0 / smoothed

    def probe_size(self):
        """Bytes for an ECHO probe when one is due (no sample for a while), else 0."""
        if time.time() - self._last_sample < self._probe_wait_s:
            return 0
        self._last_sample = time.time()  # at most one probe per interval, whatever it shows
        self.probes += 1
        size = int(self.bandwidth_mbps * 1e6 / 8 * PROBE_MS / 1000.0 / 2)
        return min(max(size, PROBE_BYTES[0]), PROBE_BYTES[1])

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

