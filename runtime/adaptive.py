"""Adaptive mode: re-plan during a run from the bandwidth the edge actually sees.

Each request tells how long its bytes took on the wire: transmission time minus
the round-trip time measured at start, for (request + reply) bytes.  Those give a
sample of time per bit; an exponentially weighted mean of time per bit smooths
them (averaging time per bit, not bandwidth, reacts within a request or two when
the link slows down, which is when a wrong split costs most), and an exponentially
weighted mean deviation beside it (as TCP keeps for its round trip) gives a
*pessimistic* time per bit: mean + 2 deviations.  After every batch the planner
predicts every split with the smoothed bandwidth (and, at a cadence, its latency
from release, where a split that keeps the link busy, or sends many bytes over a
jittery one, queues: planner.at_cadence, with the deviation above); the edge switches (with
EdgeSession.switch_to, the hot-swap mechanism) only when another split is predicted
better than the current one by ``margin`` and at least ``hold`` batches have passed
since the last switch, so it does not flap.

A transfer that is overdue is evidence too.  While the edge waits for a reply, a
``watch()`` tells it when the reply is overdue (four times its pessimistic wire time
plus twice the cloud's last time, plus 20 ms); each time it is (at 1x, 2x, 4x ...
that deadline) the wait so far is a *censored* sample: the bytes took at least this
long, so time per bit is at least that, and the estimate is raised to it at once.
When the reply arrives, its real sample replaces the bound and is taken whole (the
stall proved the smoothed history stale); when it never arrives (the connection is
lost) the bound stays (``lost``).  A transfer that was overdue is a stall: the next
decision ignores ``hold``.

At late splits the requests are too small to show the bandwidth (a token bucket
lets a few KiB through at line rate), so a link that has recovered would go
unnoticed: when no request has given a sample for ``PROBE_AFTER_S``, the edge
echoes a probe sized to take about ``PROBE_MS`` at the *pessimistic* estimate
(32 KiB to 1 MiB each way), sent as a train of chunks with at most two in flight
and cut off once it has taken ``PROBE_CAP_MS`` (profile.echo_train): a probe that
starts just as the link drops costs one or two chunks at the new rate, not a
megabyte.  A probe is a deliberate measurement, so it weighs more than a request
(``PROBE_ALPHA``); on a slow link a probe is expensive, so the next one waits at
least ``PROBE_COST_SHARE`` times as long as the last one took (probing costs at most
5% of the run).

Python 3.6 syntax.
"""
import time

from .planner import at_cadence, choose, latency_key, predict

ALPHA = 0.3        # weight of a new bandwidth sample
BETA = 0.25        # weight of a new sample's deviation from the mean
MARGIN = 0.15      # switch only for a predicted gain of 15% or more
HOLD = 5           # batches to stay on a split after switching
MIN_WIRE_MS = 0.2  # transfers shorter than this say too little about bandwidth
MIN_SAMPLE_BYTES = 4096  # nor do tiny ones: a token bucket or a socket buffer lets them through at line rate
PROBE_AFTER_S = 2.0     # seconds without a sample before an ECHO probe ...
PROBE_COST_SHARE = 20   # ... and at least this many times the last probe's duration
PROBE_ALPHA = 0.6       # weight of a probe's sample
PROBE_MS = 25.0         # a probe's size: about this long at the pessimistic bandwidth ...
PROBE_BYTES = (32768, 1 << 20)  # ... within these bounds (each way)
PROBE_CAP_MS = 100.0    # no chunk of a probe is sent after it has taken this long
OVERDUE_FACTOR = 4.0    # a reply is overdue after this many times its pessimistic wire time ...
OVERDUE_CLOUD = 2.0     # ... plus this many times the cloud's last compute and queue time ...
OVERDUE_MIN_MS = 20.0   # ... plus this


class AdaptivePlanner(object):
    def __init__(self, edge, cloud, network, batch_size=1, objective="latency", margin=MARGIN, hold=HOLD,
                 interval_ms=0.0):
        self.edge, self.cloud = edge, cloud
        self.interval_ms = interval_ms  # run-edge --interval-ms: plan for the latency from release
        self.rtt_ms = network["rtt_ms"]
        self._us_per_bit = 1.0 / network["bandwidth_mbps"]  # 1 / Mbit/s = microseconds per bit
        self._dev_us_per_bit = 0.25 * self._us_per_bit
        self.batch_size = batch_size
        self.objective = objective
        self.margin = margin
        self.hold = hold
        self._since_switch = 0
        self._last_sample = time.time()
        self._probe_wait_s = PROBE_AFTER_S
        self._before_bound = None  # the estimate before an unanswered transfer's censored bound raised it
        self._stalled = False
        self._reply_bytes = 0      # the last reply's size and the cloud's last time, for the next watch()
        self._cloud_ms = 0.0
        self.probes = 0
        self.stalls = 0

    @property
    def bandwidth_mbps(self):
        return 1.0 / self._us_per_bit

    def pessimistic_mbps(self):
        return 1.0 / (self._us_per_bit + 2.0 * self._dev_us_per_bit)

    def observe(self, bytes_sent, bytes_received, transmission_ms, probe=False, cloud_ms=None):
        """Fold one transfer (a request's, or with ``probe`` an ECHO probe's) into the bandwidth estimate.

        ``cloud_ms`` (the cloud's compute and queue time for a request) sizes the next watch()."""
        stalled = self._before_bound is not None
        if stalled:  # the real sample supersedes the bound raised while waiting for it
            self._us_per_bit, self._dev_us_per_bit = self._before_bound
            self._before_bound = None
        if probe:
            self._probe_wait_s = max(PROBE_AFTER_S, PROBE_COST_SHARE * transmission_ms / 1000.0)
        else:
            self._since_switch += 1
            self._reply_bytes = bytes_received
            self._cloud_ms = cloud_ms if cloud_ms is not None else self._cloud_ms
        wire_ms = transmission_ms - self.rtt_ms
        if wire_ms < MIN_WIRE_MS or bytes_sent + bytes_received < MIN_SAMPLE_BYTES:
            return
        self._last_sample = time.time()
        # a transfer that stalled proved the history stale: its sample is taken whole, so that the re-plan the
        # stall triggers sees the link as it is, not a third of the way there
        alpha = 1.0 if stalled else PROBE_ALPHA if probe else ALPHA
        self._fold(wire_ms * 1000.0 / ((bytes_sent + bytes_received) * 8.0), alpha)

    def _fold(self, us_per_bit, alpha):
        self._dev_us_per_bit = (1 - BETA) * self._dev_us_per_bit + BETA * abs(us_per_bit - self._us_per_bit)
        self._us_per_bit = (1 - alpha) * self._us_per_bit + alpha * us_per_bit

    def watch(self):
        """What the edge tells while it waits for the next request's reply (see the module's docstring)."""
        return _Watch(self, self._reply_bytes, self._cloud_ms)

    def censor(self, nbytes, wire_ms):
        """An unanswered transfer of ``nbytes`` has spent at least ``wire_ms`` on the wire: raise the time per
        bit to that bound at once (no smoothing: it is certain), and make the next decision a re-plan."""
        if wire_ms <= 0 or nbytes <= 0:
            return
        bound = wire_ms * 1000.0 / (nbytes * 8.0)
        if bound <= self._us_per_bit:
            return
        if self._before_bound is None:
            self._before_bound = (self._us_per_bit, self._dev_us_per_bit)
            self.stalls += 1
        self._dev_us_per_bit = max(self._dev_us_per_bit, bound - self._us_per_bit)
        self._us_per_bit = bound
        self._stalled = True
        self._last_sample = time.time()

    def lost(self):
        """The transfer being watched will never be answered (the connection broke): its bound stays."""
        self._before_bound = None

    def probe_size(self):
        """Bytes (each way) for an ECHO probe when one is due (no sample for a while), else 0."""
        if time.time() - self._last_sample < self._probe_wait_s:
            return 0
        self._last_sample = time.time()  # at most one probe per interval, whatever it shows
        self.probes += 1
        size = int(self.pessimistic_mbps() * 1e6 / 8 * PROBE_MS / 1000.0 / 2)
        return min(max(size, PROBE_BYTES[0]), PROBE_BYTES[1])

    def rows(self):
        output_bytes = self.edge.get("output_bytes_per_sample", 0)
        rows = predict(self.edge["points"], self.edge["segment_ms"], self.cloud["segment_ms"], self.rtt_ms,
                       self.bandwidth_mbps, self.batch_size, output_bytes)
        if self.interval_ms:
            rows = at_cadence(rows, self.interval_ms, self._dev_us_per_bit, self.batch_size, output_bytes)
        return rows

    def decide(self, current_split):
        """A better split and the reason, or (None, None)."""
        stalled, self._stalled = self._stalled, False
        if self._since_switch < self.hold and not stalled:
            return None, None
        rows = self.rows()
        best = choose(rows, self.objective)
        current = rows[current_split]
        if best["split"] == current_split:
            return None, None
        if self.objective == "latency":
            (b_released, b_ms), (c_released, c_ms) = latency_key(best), latency_key(current)
            if b_released == c_released == float("inf"):  # neither keeps up with the cadence: the faster
                b_released, c_released = b_ms, c_ms
            better = b_released < (1 - self.margin) * c_released
            gain = "{:.3f} ms instead of {:.3f} ms".format(b_released, c_released)
            if "released_ms" in best:
                gain += " from release"
        else:
            better = best["throughput_samples_per_s"] > (1 + self.margin) * current["throughput_samples_per_s"]
            gain = "{:.1f} instead of {:.1f} samples/s".format(best["throughput_samples_per_s"],
                                                               current["throughput_samples_per_s"])
        if not better:
            return None, None
        self._since_switch = 0
        return best["split"], "bandwidth now {:.2f} Mbit/s{}: split {} predicted {}".format(
            self.bandwidth_mbps, " after a stall" if stalled else "", best["split"], gain)


class _Watch(object):
    """One unanswered request: when its reply is overdue, and what each overdue moment says."""

    def __init__(self, planner, reply_bytes, cloud_ms):
        self.planner, self.reply_bytes, self.cloud_ms = planner, reply_bytes, cloud_ms

    def _slack_ms(self):
        return self.planner.rtt_ms + OVERDUE_CLOUD * self.cloud_ms

    def after_ms(self, sent):
        """Milliseconds after sending ``sent`` bytes at which the reply is overdue."""
        wire_ms = (sent + self.reply_bytes) * 8.0 / (self.planner.pessimistic_mbps() * 1000.0)
        return self._slack_ms() + OVERDUE_FACTOR * wire_ms + OVERDUE_MIN_MS

    def overdue(self, sent, waited_ms):
        """The reply has not come ``waited_ms`` after the request went out."""
        self.planner.censor(sent + self.reply_bytes, waited_ms - self._slack_ms())
