"""Adaptive mode: re-plan during a run from the bandwidth the edge actually sees.

Each request tells how long its bytes took on the wire: transmission time minus
the round-trip time measured at start, for (request + reply) bytes.  Those give a
sample of time per bit, kept with its time (an injected clock) in a *window* of
the last ``WINDOW_S`` seconds (the newest sample stays however old it is).  Before
any transfer the window's place is taken by the plan's samples: a ``--link-profile``
trace's, or the probe's one rate.  After every batch the planner predicts every
split over the window's samples, as ``plan`` does over a link profile
(planner.distribution: expected latency and p95, hedged at ``--deadline-ms``, from
release at a cadence), with a short-horizon forecast: each sample weighs
``0.5 ** (age / HALF_LIFE_S)`` (a probe, a deliberate measurement, ``PROBE_WEIGHT``
times that).  A cellular link's rate is correlated over about a second (its
scheduler, fading), so the next request is better forecast by the last half second
than by the last five; the older samples keep the spread that p95 and the queue at
a cadence need, and the forecast reaches a drop in the rate within about a second
(a sample's weight halves every 0.5 s).  The *pessimistic* time per bit that sizes
probes and overdue waits is the weighted mean plus two weighted deviations (a
quarter of the mean while the window holds one sample).

The edge switches (with EdgeSession.switch_to, the hot-swap mechanism) only when
another split is predicted better than the current one by ``margin``, at least
``hold`` seconds (``HOLD_S``) have passed since the last switch, and the switch pays
for itself: a head that is not loaded (not the start's, not preloaded, not switched
to before) costs ``load_ms`` to load or chain (the median of the loads this run has
timed, ``EdgeSession.load_ms``; ``LOAD_MS`` before any), and the gain per request over the
requests of one hold (``HOLD_S`` at the cadence, or back to back at the new split's
latency) must exceed it.  A switch back within the hold is never made (the hold),
so a small gain cannot make the edge flap.

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
While a bound stands it is the link's one sample.  When the reply arrives, its real
sample replaces the bound and the window (the stall proved the history stale); when
it never arrives (the connection is lost) the bound becomes the window's one sample
(``lost``).  A transfer that was overdue is a stall: the next
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
(``PROBE_WEIGHT``); on a slow link a probe is expensive, so the next one waits at
least ``PROBE_COST_SHARE`` times as long as the last one took (probing costs at most
5% of the run).

Python 3.6 syntax.
"""
import collections
import time

from runtime.bundle.schema import LOCAL
from runtime.edge.planner import choose, distribution, latency_key, predict, weighted_summary

WINDOW_S = 5.0     # the samples of the last this many seconds ...
HALF_LIFE_S = 0.5  # ... each weighing half as much every this many seconds of age
MARGIN = 0.15      # switch only for a predicted gain of 15% or more ...
HOLD_S = 1.0       # ... at least this many seconds after the last switch ...
LOAD_MS = 300.0    # ... and paying for loading a head not loaded (until this run has timed its own loads)
MIN_WIRE_MS = 0.2  # transfers shorter than this say too little about bandwidth
MIN_SAMPLE_BYTES = 4096  # nor do tiny ones: a token bucket or a socket buffer lets them through at line rate
PROBE_AFTER_S = 2.0     # seconds without a sample before an ECHO probe ...
PROBE_COST_SHARE = 20   # ... and at least this many times the last probe's duration
PROBE_WEIGHT = 2.0      # a probe's sample weighs this many requests' samples
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
    def __init__(self, edge, cloud, network, batch_size=1, objective="latency", hold=HOLD_S, interval_ms=0.0,
                 clock=time.monotonic):
        self.edge, self.cloud = edge, cloud
        self.local = False  # set where the edge can run the whole model: "local" is a split it may choose too
        self.start_local = False  # the plan chose local: the run starts there
        self.loaded = set()  # splits whose heads are loaded (the start's, the preloaded): a switch there costs none
        self.load_ms = LOAD_MS  # what loading another costs (the run's own loads, once timed)
        self.deadline_ms = None  # run-edge --deadline-ms: predictions count the hedge
        self.interval_ms = interval_ms  # run-edge --interval-ms: plan for the latency from release
        self.rtt_ms = network["rtt_ms"]
        # microseconds per bit (1 / Mbit/s) of the plan's samples, until the window holds a transfer's
        self._prior = [1.0 / mbps for mbps in network.get("samples_mbps") or [network["bandwidth_mbps"]]]
        self._window = collections.deque()  # (clock time, us per bit, weight) of each transfer and probe
        self._bound = None  # the censored bound of an unanswered transfer (us per bit), while it stands
        self._clock = clock
        self.batch_size = batch_size
        self.objective = objective
        self.margin = MARGIN
        self.hold = hold
        self._switched_at = clock()
        self._last_sample = clock()
        self._probe_wait_s = PROBE_AFTER_S
        self._stalled = False
        self._reply_bytes = 0      # the last reply's size and the cloud's last time, for the next watch()
        self._cloud_ms = 0.0
        self.probes = 0
        self.stalls = 0
        self.edge_scale = 1.0   # measured head time / the edge profile's, and the same for the cloud
        self.cloud_scale = 1.0

    def _samples(self):
        """(us per bit, weights) the forecast is made of: the bound while one stands, else the window's samples
        weighted by age (see the module's docstring), else the plan's."""
        if self._bound is not None:
            return [self._bound], [1.0]
        now = self._clock()
        while len(self._window) > 1 and now - self._window[0][0] > WINDOW_S:
            self._window.popleft()
        if not self._window:
            return list(self._prior), [1.0] * len(self._prior)
        return ([us for _, us, _ in self._window],
                [w * 0.5 ** (max(now - t, 0.0) / HALF_LIFE_S) for t, _, w in self._window])

    def _estimate(self):
        """(weighted mean, weighted deviation) of the time per bit; a quarter of the mean for one sample."""
        us, weights = self._samples()
        mean, _, var = weighted_summary(us, weights)
        return mean, (var ** 0.5 if len(us) > 1 else 0.25 * mean)

    @property
    def bandwidth_mbps(self):
        return 1.0 / self._estimate()[0]

    def pessimistic_mbps(self):
        mean, dev = self._estimate()
        return 1.0 / (mean + 2.0 * dev)

    def observe(self, bytes_sent, bytes_received, transmission_ms, probe=False, cloud_ms=None, edge_ms=None,
                split=None):
        """Fold one transfer (a request's, or with ``probe`` an ECHO probe's) into the window.

        ``cloud_ms`` (the cloud's compute and queue time for a request) sizes the next watch(); with ``edge_ms``
        (the head's time) and ``split`` (where the request ran) both refine the compute scales."""
        if split is not None and not probe:
            self._scale(split, edge_ms, cloud_ms)
        stalled, self._bound = self._bound is not None, None  # the real sample supersedes the bound
        if probe:
            self._probe_wait_s = max(PROBE_AFTER_S, PROBE_COST_SHARE * transmission_ms / 1000.0)
        else:
            self._reply_bytes = bytes_received
            self._cloud_ms = cloud_ms if cloud_ms is not None else self._cloud_ms
        wire_ms = transmission_ms - self.rtt_ms
        if wire_ms < MIN_WIRE_MS or bytes_sent + bytes_received < MIN_SAMPLE_BYTES:
            return
        self._last_sample = self._clock()
        if stalled:  # a transfer that stalled proved the history stale: its sample is the window
            self._window.clear()
        self._window.append((self._last_sample, wire_ms * 1000.0 / ((bytes_sent + bytes_received) * 8.0),
                             PROBE_WEIGHT if probe else 1.0))

    def observe_local(self, edge_ms):
        """A request answered here by the whole model (adaptive mode at ``local``): it tells the edge's speed."""
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

    def watch(self):
        """What the edge tells while it waits for the next request's reply (see the module's docstring)."""
        return _Watch(self, self._reply_bytes, self._cloud_ms)

    def censor(self, nbytes, wire_ms):
        """An unanswered transfer of ``nbytes`` has spent at least ``wire_ms`` on the wire: raise the time per
        bit to that bound at once (no smoothing: it is certain), and make the next decision a re-plan."""
        if wire_ms <= 0 or nbytes <= 0:
            return
        bound = wire_ms * 1000.0 / (nbytes * 8.0)
        if bound <= self._estimate()[0]:
            return
        if self._bound is None:
            self.stalls += 1
        self._bound = bound
        self._stalled = True
        self._last_sample = self._clock()

    def lost(self):
        """The transfer being watched will never be answered (the connection broke): its bound stays, as the
        window's one sample."""
        if self._bound is not None:
            self._window.clear()
            self._window.append((self._clock(), self._bound, 1.0))
            self._bound = None

    def probe_size(self, idle_ms=None):
        """Bytes (up) for an ECHO probe when one is due (no sample for a while), else 0.

        ``idle_ms``: at a cadence, the time until the next frame is released (0: one is waiting)."""
        if self._clock() - self._last_sample < self._probe_wait_s:
            return 0
        bytes_per_ms = self.pessimistic_mbps() * 1e6 / 8 / 1000.0
        size = int(bytes_per_ms * PROBE_MS)
        if idle_ms is None:
            size = min(max(size, PROBE_BYTES[0]), PROBE_BYTES[1])
        elif idle_ms <= 0:
            return 0  # a frame is waiting: probe after it
        else:
            size = min(max(min(size, int(bytes_per_ms * idle_ms / 2)), PROBE_BYTES_PACED), PROBE_BYTES[1])
        self._last_sample = self._clock()  # at most one probe per interval, whatever it shows
        self.probes += 1
        return size

    def rows(self, scale=1.0):
        """Every split predicted over the forecast's samples, each ``scale`` times as fast (planner.distribution)."""
        output_bytes = self.edge.get("output_bytes_per_sample", 0)
        splits = list(range(len(self.edge["points"]))) + ([LOCAL] if self.local else [])
        edge_ms = [t * self.edge_scale for t in self.edge["segment_ms"]]
        us, weights = self._samples()
        mean, dev = self._estimate()
        network = {"rtt_ms": self.rtt_ms, "samples_mbps": [scale / u for u in us], "weights": weights,
                   "dev_us_per_bit": dev / scale if len(us) == 1 else 0.0}
        rows = predict(self.edge["points"], edge_ms, [t * self.cloud_scale for t in self.cloud["segment_ms"]],
                       self.rtt_ms, scale / mean, self.batch_size, output_bytes, splits)
        deadline = None if self.deadline_ms is None else (self.deadline_ms, float(sum(edge_ms)))
        return distribution(rows, network, self.batch_size, output_bytes, self.interval_ms, deadline)

    def alternates(self, current_split, factors=(0.25, 4.0)):
        """The splits the plan would choose on a link ``factors`` times as fast: the switches most likely to
        come, whose heads run-edge loads before it starts (a switch then costs no load)."""
        chosen = []
        for f in factors:
            k = choose(self.rows(f), self.objective)["split"]
            if k != current_split and k not in chosen and k != LOCAL:  # local has no head to load
                chosen.append(k)
        return chosen

    def switch_cost_ms(self, split):
        """What switching to ``split`` costs once: loading its head (or chain), unless it is loaded or has none."""
        return 0.0 if split in self.loaded or split in (0, LOCAL) else self.load_ms

    def decide(self, current_split):
        """A better split and the reason, or (None, None)."""
        stalled, self._stalled = self._stalled, False
        now = self._clock()
        if now - self._switched_at < self.hold and not stalled:
            return None, None
        rows = self.rows()
        best = choose(rows, self.objective)
        current = next(r for r in rows if r["split"] == current_split)
        if best["split"] == current_split:
            return None, None
        if self.objective in ("latency", "p95"):
            better, gain = self._pays(best, current)
        else:
            better = best["throughput_samples_per_s"] > (1 + self.margin) * current["throughput_samples_per_s"]
            gain = "{:.1f} instead of {:.1f} samples/s".format(best["throughput_samples_per_s"],
                                                               current["throughput_samples_per_s"])
        if not better:
            return None, None
        self._switched_at = now
        self.loaded.add(best["split"])
        return best["split"], "bandwidth now {:.2f} Mbit/s{}: split {} predicted {}".format(
            self.bandwidth_mbps, " after a stall" if stalled else "", best["split"], gain)

    def _pays(self, best, current):
        """(whether switching from ``current`` to ``best`` is worth it, the words for it): better by the margin,
        and the gain over the requests of one hold more than the switch's own cost."""
        (b_fig, b_ms), (c_fig, c_ms) = latency_key(best, self.objective), latency_key(current, self.objective)
        if b_fig == c_fig == float("inf"):  # neither keeps up with the cadence: the faster
            b_fig, c_fig = b_ms, c_ms
        requests = max(self.hold, HOLD_S) * 1000.0 / max(self.interval_ms, b_fig, 1e-3)
        better = b_fig < (1 - self.margin) * c_fig and (c_fig - b_fig) * requests > self.switch_cost_ms(best["split"])
        gain = "{}{:.3f} ms instead of {}".format("p95 " if self.objective == "p95" else "", b_fig,
                                                  "a queue that only grows" if c_fig == float("inf") else
                                                  "{:.3f} ms".format(c_fig))
        if "released_ms" in best:
            gain += " from release"
        return better, gain


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
