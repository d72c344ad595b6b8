"""When spinning for a reply pays: the edge's busy poll, and when it backs off.

With ``--busy-poll`` (run-edge's default) the edge waits for a reply asleep in
``select`` until shortly before it is due, then spins on non-blocking receives for
up to 2 ms, so that the reply is handled by a thread that is already running instead
of one that must first be woken (about 0.15 ms on loopback, bench/speed.py).  That
pays only while the spinning thread really holds a core.  On a busy CPU (a Jetson
decoding camera frames, a host serving many edges) the reply comes late, after the
spin has given up, or the spinner is preempted: either way the spin burns CPU (a
Jetson's battery, and cycles the other work needs) for nothing.

So each spin is scored: it paid when the reply came while it spun *and* the thread
held its core meanwhile (its CPU time over the spin's wall time, at least
``MIN_SHARE``).  A spin that missed (the reply came later: 2 ms of CPU for nothing)
or was starved did not pay: the next ``backoff`` requests do not spin (they sleep
in ``recv``), and ``backoff`` doubles with every spin that did not pay, from 1 up
to ``MAX_BACKOFF``; a spin that paid resets it.  Spins that found the reply at once
(under ``MIN_SPIN_S``) cost nothing and change nothing.  So on a quiet machine,
where most replies land in the spin, the edge spins as before (after an occasional
late reply it sleeps through one request); on a busy one it tries one spin in every
``MAX_BACKOFF`` requests, and spins again within that many requests once the CPU is
free.  bench/contention.py (both cores busy, split 3): every spin missed, and
spinning cost the edge 1.75 ms of CPU per sample instead of 0.67 ms.

Pure: no I/O.  Python 3.6 syntax.
"""
MIN_SHARE = 0.8      # a spin that got less of a core than this was starved
MAX_BACKOFF = 64     # at most this many requests without spinning between tries
MIN_SPIN_S = 0.0002  # spins shorter than this are not scored


class SpinPolicy(object):
    def __init__(self):
        self.backoff = 0
        self._skip = 0
        self.spins = 0
        self.starved = 0
        self.missed = 0

    def should_spin(self):
        """Whether to spin for this request's reply."""
        if self._skip > 0:
            self._skip -= 1
            return False
        return True

    def record(self, hit, wall_s, cpu_s):
        """One spin took ``wall_s`` of wall time and ``cpu_s`` of this thread's CPU time; ``hit``: the reply came
        while it spun."""
        if hit and wall_s < MIN_SPIN_S:
            return
        self.spins += 1
        starved = cpu_s < MIN_SHARE * wall_s
        self.missed += not hit
        self.starved += starved
        if hit and not starved:
            self.backoff = 0
        else:
            self.backoff = min(max(1, 2 * self.backoff), MAX_BACKOFF)
            self._skip = self.backoff
