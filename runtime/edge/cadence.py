"""When each measured request may start: back to back, or at a camera's cadence.

By default run-edge sends request ``i`` as soon as request ``i - 1`` allows
(``--inflight``): every figure is the request's own time.  A camera does not work
that way: a frame comes every ``interval`` ms whether or not the last one is done.
With ``--interval-ms T`` request ``i`` is *released* at ``start + i * T``; the head
runs at its release or, when the requests before it are late, as soon as the edge
is free, and the time it waited for that (``wait_ms``) is part of what the user
sees: latency from release = wait + end-to-end.  That is how a slow link shows as
a growing queue rather than as fewer samples, and why every mode of a trace replay
(bench/traces.py) sees the same samples at the same moments of the trace.

``--start-at U`` (Unix seconds) holds the first measured request until the wall
clock says ``U``: several runs (or edges) line up on one clock; a start already
past begins at once.  Warm-up requests are sent before the wait.

Pure but for the clock it is given.  Python 3.6 syntax.
"""
import time


class Cadence(object):
    """Release times of measured requests.  ``interval_ms`` 0: back to back (released when started)."""

    def __init__(self, interval_ms=0.0, start_at=None, clock=time.perf_counter, wall=time.time):
        if interval_ms < 0:
            raise ValueError("interval_ms must not be negative")
        self.interval_s = interval_ms / 1000.0
        self.start_at = start_at
        self._clock, self._wall = clock, wall
        self.started = None       # the clock at the first release
        self.started_unix = None  # the same moment on the wall clock

    def start(self, sleep=time.sleep):
        """Wait for ``start_at`` (if given and ahead), then mark the start; returns the seconds waited."""
        waited = 0.0
        if self.start_at is not None:
            waited = max(0.0, self.start_at - self._wall())
            if waited:
                sleep(waited)
        self.started, self.started_unix = self._clock(), self._wall()
        return waited

    def release(self, position):
        """The clock time at which request ``position`` (0-based) is released; None when back to back."""
        if not self.interval_s:
            return None
        return self.started + position * self.interval_s

    def due_in(self, position):
        """Seconds until request ``position`` is released (0 when it is, or when back to back)."""
        release = self.release(position)
        return 0.0 if release is None else max(0.0, release - self._clock())
