"""The link's profile on the edge: a link trace read into throughput samples (``--link-profile FILE``).

A trace is either of two formats, read here and by the benchmarks' replayed link
(bench/tracelink.py imports this parser):

* Mahimahi's mm-link format: one integer per line, a time in milliseconds from the
  start of the trace, each line one opportunity for a 1500-byte packet to leave the
  bottleneck (several in one millisecond repeat the time); the schedule repeats with
  a period of its last time.  Lines out of order are sorted.
* a ``seconds,mbit`` CSV: a rate per step (the last step as long as the one before;
  fractional seconds and zero rates allowed, a header line skipped), turned into the
  same schedule: an opportunity each time another 1500 bytes of capacity has accrued.

Either may have CRLF line ends, blank lines and ``#`` comments.  Any problem is a
one-line ``TraceError`` (a UserError) naming the file and the line.

The planner's samples (``link_samples``): the trace's capacity in Mbit/s over each
window of ``SAMPLE_S`` (1 s) through one period, the rate a request that starts in
that window meets.  One second is long enough that a window's rate is what a
transfer of tens of KiB to a MiB sees (a 100 ms window of a cellular trace is often
empty only because its packets came in a burst just after it), and short enough to
keep the swings and outages that make the tail.  A window in which nothing is
delivered (an outage of a second or more) counts as one packet in the window
(``MIN_WINDOW_PACKETS``): a transfer begun in it waits for about the window's end,
not forever.

Python 3.6 syntax: this module runs on the Jetson.
"""
import bisect
import math
import os
import re

import numpy as np

from runtime.errors import UserError

PACKET = 1500  # bytes per delivery opportunity, as in mm-link
PACKET_BITS = PACKET * 8
SAMPLE_S = 1.0  # the window of one throughput sample
MIN_WINDOW_PACKETS = 1  # a window of no delivery counts as this many packets
_EPS_MS = 1e-6
_INTEGER = re.compile(r"-?[0-9]+\Z")


class TraceError(UserError, ValueError):
    """A trace file that cannot be used; the message is one line naming the file (and line)."""


def _fail(name, lineno, what):
    where = "trace {} line {}".format(name, lineno) if lineno else "trace {}".format(name)
    raise TraceError("{}: {}".format(where, what))


def _shown(token):
    token = token if len(token) <= 40 else token[:37] + "..."
    return repr(token)


class Trace(object):
    """A repeating schedule of delivery opportunities: ``times`` (int ms, sorted, in [0, period_ms]).

    Opportunity ``i`` (0-based, counting through the repetitions) is at
    ``times[i % n] + (i // n) * period_ms``; both a time 0 and a time ``period_ms`` are kept, so a
    Mahimahi trace that starts at 0 has two opportunities at each wrap, as mm-link has.
    Counts are of opportunities in ``(t0, t1]``: one at exactly ``t0`` is already past.
    """

    def __init__(self, times, period_ms, name="trace"):
        times = np.asarray(times, dtype=np.int64)
        period_ms = int(period_ms)
        if period_ms <= 0:
            raise ValueError("a trace's period must be positive, not {}".format(period_ms))
        if times.size == 0:
            raise ValueError("a trace needs at least one opportunity")
        if times[0] < 0 or times[-1] > period_ms or np.any(np.diff(times) < 0):
            raise ValueError("opportunity times must be sorted and within [0, period_ms]")
        self.times = times
        self.period_ms = period_ms
        self.name = name
        self._list = times.tolist()  # bisect on a list is faster than numpy for one value
        self._n = len(self._list)

    @classmethod
    def constant(cls, mbit, period_ms=1000, name=None):
        """``mbit`` Mbit/s throughout: an opportunity each time 1500 bytes have accrued."""
        if not mbit > 0:
            raise ValueError("a constant trace needs a positive rate, not {}".format(mbit))
        return cls(_schedule([0.0], [float(mbit)], period_ms), period_ms, name or "constant {:g} Mbit/s".format(mbit))

    def __repr__(self):
        return "Trace({!r}, {} opportunities, period {} ms, mean {:.3f} Mbit/s)".format(
            self.name, self._n, self.period_ms, self.mean_mbit())

    # counting ------------------------------------------------------------------------------
    def count_le(self, t_ms):
        """Opportunities at times <= ``t_ms`` since trace zero (0 for negative times)."""
        if t_ms < 0:
            return 0
        cycles, rem = divmod(t_ms, self.period_ms)
        return int(cycles) * self._n + bisect.bisect_right(self._list, rem)

    def _count_le_array(self, t_ms):
        t_ms = np.maximum(np.asarray(t_ms, dtype=np.float64), 0.0)
        cycles = np.floor(t_ms / self.period_ms)
        rem = t_ms - cycles * self.period_ms
        return cycles.astype(np.int64) * self._n + np.searchsorted(self.times, rem, side="right")

    def time_of(self, i):
        """The time (ms) of opportunity ``i`` (0-based, through the repetitions)."""
        cycles, idx = divmod(int(i), self._n)
        return self._list[idx] + cycles * self.period_ms

    def opportunities_between(self, t0_ms, t1_ms):
        """How many opportunities fall in ``(t0_ms, t1_ms]`` (the trace repeating)."""
        return self.count_le(t1_ms) - self.count_le(t0_ms) if t1_ms > t0_ms else 0

    def finish_ms(self, start_ms, nbytes):
        """When ``nbytes`` queued at ``start_ms`` on an otherwise empty link have all left.

        Each opportunity after ``start_ms`` carries up to 1500 bytes, so the answer is the time of
        the ceil(nbytes / 1500)-th opportunity after ``start_ms``: one bisection, whatever the size.
        """
        if nbytes <= 0:
            return float(start_ms)
        return float(self.time_of(self.count_le(start_ms) + (int(nbytes) + PACKET - 1) // PACKET - 1))

    # rates ---------------------------------------------------------------------------------
    def rates_mbit(self, step_s=1.0, seconds=None):
        """Capacity (Mbit/s) of each interval ``(k step, (k+1) step]``, for ``seconds`` (default: one period)."""
        seconds = self.period_ms / 1000.0 if seconds is None else seconds
        steps = int(math.ceil(seconds / step_s - 1e-9))
        edges = np.arange(steps + 1) * (step_s * 1000.0)
        return np.diff(self._count_le_array(edges)) * PACKET_BITS / (step_s * 1e6)

    def mean_mbit(self, t0_s=None, t1_s=None):
        """Mean capacity (Mbit/s) over ``(t0_s, t1_s]``; default the whole period."""
        if t0_s is None and t1_s is None:
            return self._n * PACKET_BITS / (self.period_ms / 1000.0) / 1e6
        t0_s = 0.0 if t0_s is None else t0_s
        t1_s = self.period_ms / 1000.0 if t1_s is None else t1_s
        if t1_s <= t0_s:
            raise ValueError("mean_mbit needs t1_s > t0_s")
        return self.opportunities_between(t0_s * 1000.0, t1_s * 1000.0) * PACKET_BITS / ((t1_s - t0_s) * 1e6)


def _schedule(starts_s, rates_mbit, period_ms):
    """Opportunity times (int ms) of a piecewise-constant rate: row i holds from ``starts_s[i]`` to the next
    row's start (the last row to ``period_ms``); an opportunity each time another 1500 bytes have accrued,
    rounded up to the next whole millisecond."""
    ends_ms = [s * 1000.0 for s in starts_s[1:]] + [float(period_ms)]
    out, accrued = [], 0.0  # bytes of capacity so far
    for start_s, end_ms, rate in zip(starts_s, ends_ms, rates_mbit):
        start_ms = start_s * 1000.0
        per_ms = rate * 1e6 / 8 / 1000.0
        gained = per_ms * (end_ms - start_ms)
        if gained > 0:
            first = math.floor(accrued / PACKET) + 1
            last = math.floor((accrued + gained) / PACKET + 1e-9)
            if last >= first:
                k = np.arange(first, last + 1, dtype=np.float64)
                t = start_ms + (k * PACKET - accrued) / per_ms
                out.append(np.minimum(np.ceil(t - _EPS_MS), end_ms).astype(np.int64))
        accrued += gained
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _data_lines(name, data):
    """(line number, text) of each line that holds data: a byte-order mark, CR or CRLF line ends, surrounding
    blanks and comments (from ``#`` to the end of the line) are not data; blank lines count in the numbering."""
    rows = []
    for lineno, raw in enumerate(data.splitlines(), 1):
        text = raw.decode("utf-8", errors="replace").lstrip("\ufeff").split("#", 1)[0].strip()
        if text:
            rows.append((lineno, text))
    if not rows:
        _fail(name, None, "no data lines; a Mahimahi trace has one integer of milliseconds per line, "
                          "a CSV trace one seconds,mbit row per step")
    return rows


def _parse_mahimahi(name, rows):
    """The opportunities in time order: a schedule's lines name opportunities, so lines out of order (which
    mm-link itself refuses) are sorted rather than refused."""
    times = []
    for lineno, text in rows:
        t = int(text) if _INTEGER.match(text) else None
        if t is None:
            _fail(name, lineno, "{} is not a whole number of milliseconds; a Mahimahi trace has one integer "
                                "per line".format(_shown(text)))
        if t < 0:
            _fail(name, lineno, "{} is negative; times are milliseconds from the start of the trace".format(t))
        times.append(t)
    times.sort()
    if times[-1] == 0:
        _fail(name, rows[-1][0], "every time is 0, so the trace lasts no time (its last time is its period); "
                                 "give times in milliseconds from the start")
    return Trace(times, times[-1], name)


def _csv_number(name, lineno, token, what):
    try:
        value = float(token) if "_" not in token else float("nan")
    except ValueError:
        value = float("nan")
    if not math.isfinite(value):
        _fail(name, lineno, "{} is not a number of {}; a CSV trace has rows seconds,mbit".format(_shown(token), what))
    return value


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_header(text):
    """A CSV's first line is a header when none of its fields is a number (``seconds,mbit``, ``time_s,rate``)."""
    return not any(_is_number(f.strip()) for f in text.split(","))


def _parse_csv(name, rows):
    if _is_header(rows[0][1]):
        rows = rows[1:]
        if not rows:
            _fail(name, None, "a header and no rows; add one seconds,mbit row per step")
    starts, rates, prev = [], [], None
    for lineno, text in rows:
        fields = [f.strip() for f in text.split(",")]
        if len(fields) != 2:
            _fail(name, lineno, "{} fields in {}; a CSV trace has two per row: seconds,mbit".format(
                len(fields), _shown(text)))
        seconds = _csv_number(name, lineno, fields[0], "seconds")
        rate = _csv_number(name, lineno, fields[1], "Mbit/s")
        if seconds < 0:
            _fail(name, lineno, "{:g} s is negative; times are seconds from the start of the trace".format(seconds))
        if prev is None and seconds != 0:
            _fail(name, lineno, "the first row is at {:g} s; a CSV trace's times start at 0".format(seconds))
        if prev is not None and seconds <= prev[1]:
            _fail(name, lineno, "{:g} s is not after {:g} s on line {}; a CSV trace's times must ascend".format(
                seconds, prev[1], prev[0]))
        if rate < 0:
            _fail(name, lineno, "rate {:g} Mbit/s is negative; give the capacity of the step in Mbit/s".format(rate))
        starts.append(seconds)
        rates.append(rate)
        prev = (lineno, seconds)
    last = rows[-1][0]
    if not any(rates):
        _fail(name, last, "every rate is 0: the trace never delivers anything; give Mbit/s per step")
    step = starts[-1] - starts[-2] if len(starts) > 1 else 1.0
    period_ms = int(round((starts[-1] + step) * 1000.0))
    if period_ms < 1:
        _fail(name, last, "the trace lasts under a millisecond; times are in seconds")
    times = _schedule(starts, rates, period_ms)
    if times.size == 0:
        _fail(name, last, "the rates add up to less than one 1500-byte packet over the whole trace; "
                          "rates are in Mbit/s")
    return Trace(times, period_ms, name)


def parse_trace(name, data):
    """A Trace from a file's bytes (Mahimahi or ``seconds,mbit`` CSV: a comma in the first data line)."""
    rows = _data_lines(name, data)
    return _parse_csv(name, rows) if "," in rows[0][1] else _parse_mahimahi(name, rows)


def load_trace(path):
    """Read a trace file; any problem is a TraceError naming the file and the line."""
    name = os.path.basename(path) or path
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        _fail(name, None, "cannot read {}: {}; give the path of a Mahimahi trace or a seconds,mbit CSV".format(
            path, exc.strerror or exc))
    return parse_trace(name, data)


def link_samples(trace, step_s=SAMPLE_S):
    """The trace's throughput samples: Mbit/s over each window of ``step_s`` through one period (at least one
    window), an empty window counted as ``MIN_WINDOW_PACKETS`` packets (see the module's docstring)."""
    floor = MIN_WINDOW_PACKETS * PACKET_BITS / (step_s * 1e6)
    return [max(float(r), floor) for r in trace.rates_mbit(step_s, max(trace.period_ms / 1000.0, step_s))]


def read_link_profile(path):
    """``--link-profile FILE``: the throughput samples (Mbit/s) of a Mahimahi trace or a ``seconds,mbit`` CSV."""
    return link_samples(load_trace(path))
