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

The profiles were measured once, maybe at a bad moment (another process, a cold
cache); the run times its own requests.  So each request's measured head time and
cloud time, over what the profiles predict for the split it ran at, give a
*compute scale* for each side (exponentially weighted, from requests where that
side's predicted time is at least ``MIN_SCALE_MS``: at split 0 the edge does
nothing and says nothing about its speed), and every split's prediction uses the
profiles times those scales.  A CPU that is slower or faster than when it was
profiled moves every split's prediction alike.

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
sends a probe sized to take about ``PROBE_MS`` at the *pessimistic* estimate
(64 KiB to 2 MiB), each chunk echoed with only ``PROBE_REPLY_BYTES`` (a request is
its activation up and a few hundred bytes down; a probe echoed whole would count a
fast downlink as uplink and see a cellular link up to twice as fast as it is), sent
as a train of chunks with at most two in flight
and cut off once it has taken ``PROBE_CAP_MS`` (profile.echo_train): a probe that
starts just as the link drops costs one or two chunks at the new rate, not a
megabyte.  At a cadence (``--interval-ms``) a probe also shares the link with the
frames: it is sent only in the idle time before the next release (none while a
frame is already waiting: it would queue in front of it), sized to take at most
half that time at the pessimistic estimate, and then may be as small as
``PROBE_BYTES_PACED`` each way (a probe of 32 KiB on a link that has fallen to
0.1 Mbit/s is 2.6 s of every frame behind it waiting).  A probe is a deliberate measurement, so it weighs more than a request
(``PROBE_ALPHA``); on a slow link a probe is expensive, so the next one waits at
least ``PROBE_COST_SHARE`` times as long as the last one took (probing costs at most
5% of the run).

Python 3.6 syntax.
"""
import time

from runtime.bundle.schema import LOCAL
from runtime.edge.planner import at_cadence, choose, latency_key, predict

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
PROBE_BYTES = (65536, 1 << 21)  # ... within these bounds (up)
PROBE_CAP_MS = 100.0    # no chunk of a probe is sent after it has taken this long
PROBE_BYTES_PACED = 4096  # at a cadence, the smallest probe: one sample's worth
PROBE_REPLY_BYTES = 64    # what each echo brings back: the probe measures the uplink, which the activation takes
OVERDUE_FACTOR = 4.0    # a reply is overdue after this many times its pessimistic wire time ...
OVERDUE_CLOUD = 2.0     # ... plus this many times the cloud's last compute and queue time ...
OVERDUE_MIN_MS = 20.0   # ... plus this
SCALE_ALPHA = 0.2       # weight of a request's measured over predicted compute time
MIN_SCALE_MS = 2.0      # a side predicted to compute less than this says nothing about its speed
SCALE_BOUNDS = (0.25, 4.0)  # a measured scale outside these is not the CPU's speed but a stall


class AdaptivePlanner(object):
    def __init__(self, edge, cloud, network, batch_size=1, objective="latency", margin=MARGIN, hold=HOLD,
                 interval_ms=0.0):
        self.edge, self.cloud = edge, cloud
        self.local = False  # set where the edge can run the whole model: "local" is a split it may choose too
        self.start_local = False  # the plan chose local: the run starts there
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
        self.edge_scale = 1.0   # measured head time / the edge profile's, and the same for the cloud
        self.cloud_scale = 1.0

    @property
    def bandwidth_mbps(self):
        return 1.0 / self._us_per_bit

    def pessimistic_mbps(self):
        return 1.0 / (self._us_per_bit + 2.0 * self._dev_us_per_bit)

    def observe(self, bytes_sent, bytes_received, transmission_ms, probe=False, cloud_ms=None, edge_ms=None,
                split=None):
        """Fold one transfer (a request's, or with ``probe`` an ECHO probe's) into the bandwidth estimate.

        ``cloud_ms`` (the cloud's compute and queue time for a request) sizes the next watch(); with ``edge_ms``
        (the head's time) and ``split`` (where the request ran) both refine the compute scales."""
        if split is not None and not probe:
            self._scale(split, edge_ms, cloud_ms)
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

    def observe_local(self, edge_ms):
        """A request answered here by the whole model (adaptive mode at ``local``): it tells the edge's speed."""
        self._since_switch += 1
        self._scale(LOCAL, edge_ms, None)

    def _scale(self, split, edge_ms, cloud_ms):
        k = len(self.edge["segment_ms"]) if split == LOCAL else split
        predicted_edge = sum(self.edge["segment_ms"][:k]) * self.batch_size
        predicted_cloud = sum(self.cloud["segment_ms"][k:]) * self.batch_size
        if edge_ms is not None and predicted_edge >= MIN_SCALE_MS:
            self.edge_scale = self._fold_scale(self.edge_scale, edge_ms / predicted_edge)
        if cloud_ms is not None and predicted_cloud >= MIN_SCALE_MS:
            self.cloud_scale = self._fold_scale(self.cloud_scale, cloud_ms / predicted_cloud)

    @staticmethod
    def _fold_scale(scale, ratio):
        ratio = min(max(ratio, SCALE_BOUNDS[0]), SCALE_BOUNDS[1])
        return (1 - SCALE_ALPHA) * scale + SCALE_ALPHA * ratio

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

    def probe_size(self, idle_ms=None):
        """Bytes (up) for an ECHO probe when one is due (no sample for a while), else 0.

        ``idle_ms``: at a cadence, the time until the next frame is released (0: one is waiting)."""
        if time.time() - self._last_sample < self._probe_wait_s:
            return 0
        bytes_per_ms = self.pessimistic_mbps() * 1e6 / 8 / 1000.0
        size = int(bytes_per_ms * PROBE_MS)
        if idle_ms is None:
            size = min(max(size, PROBE_BYTES[0]), PROBE_BYTES[1])
        elif idle_ms <= 0:
            return 0  # a frame is waiting: probe after it
        else:
            size = min(max(min(size, int(bytes_per_ms * idle_ms / 2)), PROBE_BYTES_PACED), PROBE_BYTES[1])
        self._last_sample = time.time()  # at most one probe per interval, whatever it shows
        self.probes += 1
        return size

    def rows(self):
        output_bytes = self.edge.get("output_bytes_per_sample", 0)
        splits = list(range(len(self.edge["points"]))) + ([LOCAL] if self.local else [])
        rows = predict(self.edge["points"], [t * self.edge_scale for t in self.edge["segment_ms"]],
                       [t * self.cloud_scale for t in self.cloud["segment_ms"]], self.rtt_ms,
                       self.bandwidth_mbps, self.batch_size, output_bytes, splits)
        if self.interval_ms:
            rows = at_cadence(rows, self.interval_ms, self._dev_us_per_bit, self.batch_size, output_bytes)
        return rows

    def alternates(self, current_split, factors=(0.25, 4.0)):
        """The splits the plan would choose on a link ``factors`` times as fast: the switches most likely to
        come, whose heads run-edge loads before it starts (a switch then costs no load)."""
        us_per_bit, chosen = self._us_per_bit, []
        try:
            for f in factors:
                self._us_per_bit = us_per_bit / f
                k = choose(self.rows(), self.objective)["split"]
                if k != current_split and k not in chosen and k != LOCAL:  # local has no head to load
                    chosen.append(k)
        finally:
            self._us_per_bit = us_per_bit
        return chosen

    def decide(self, current_split):
        """A better split and the reason, or (None, None)."""
        stalled, self._stalled = self._stalled, False
        if self._since_switch < self.hold and not stalled:
            return None, None
        rows = self.rows()
        best = choose(rows, self.objective)
        current = next(r for r in rows if r["split"] == current_split)
        if best["split"] == current_split:
            return None, None
        if self.objective == "latency":
            (b_released, b_ms), (c_released, c_ms) = latency_key(best), latency_key(current)
            if b_released == c_released == float("inf"):  # neither keeps up with the cadence: the faster
                b_released, c_released = b_ms, c_ms
            better = b_released < (1 - self.margin) * c_released
            gain = "{:.3f} ms instead of {}".format(b_released, "a queue that only grows" if c_released == float(
                "inf") else "{:.3f} ms".format(c_released))
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
