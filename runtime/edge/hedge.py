"""Deadline hedging: a request whose reply is late is finished on this device, and the link is not waited on.

``run-edge --deadline-ms D`` gives every frame a latency budget from its release.  The edge sends the
activation as usual and waits for the reply, but not past the first of

* ``deadline``: the moment when finishing on the edge would only just meet the budget
  (release + D - the expected local compute);
* ``overdue``: the reply is overdue by the link's bound, the round trips' smoothed mean plus four mean
  deviations (RFC 6298's estimator, as TCP times its retransmissions), at least ``OVERDUE_MIN_MS`` more than
  the mean;
* ``max_age`` (``--max-age-ms A``, at a cadence): the next frame would have waited behind the link for A.

Then the request is finished here (``runtime/edge/local.py``'s ``LocalModel``: the split's tail from the
activation the edge holds, or the whole model from the input, whichever is faster) and the connection kept:
the late reply, when it comes, is read, counted and discarded.  Until it has come the link is busy (one
request on it at a time, as ``--inflight 1``), and frames released meanwhile are answered here without being
sent; a connection that breaks is reconnected in the background while frames go on being answered here.  So
during an outage every frame is still answered, and no frame waits behind a stalled link for longer than the
budget allows.

With ``--max-age-ms A`` alone a frame that could not start within A of its release is *stale*: answered here
(``--stale local``, the default) or dropped (``--stale drop``: a camera's latest frame is what matters), and
counted either way.

``HedgePolicy`` (pure: times are given to it) decides; ``HedgedPipe`` is the measured loop's pipe that applies
it on a real connection.

Python 3.6 syntax: this module runs on the Jetson.
"""
import collections
import select
import threading
import time

from runtime.edge.client import CloudLost
from runtime.edge.console import say
from runtime.edge.local import LOCAL, LocalAnswer
from runtime.errors import UserError
from runtime.wire import codec, sockets

LINK_ALPHA = 0.125     # RFC 6298: weight of a new round trip in the smoothed mean ...
LINK_BETA = 0.25       # ... and of its deviation in the mean deviation
LINK_K = 4.0           # the bound is the mean plus this many deviations ...
OVERDUE_MIN_MS = 20.0  # ... and at least this much above the mean (a quiet link's deviation tends to 0; as adaptive.py)
HEDGED = "hedged"      # a request finished here after waiting for the cloud
# a send that no byte of leaves for this long (or until the request's give-up, if later) met a stalled link, not a
# slow one: a link that carries anything frees send buffer every round trip (40 ms in bench/traces.py's runs)
SEND_STALL_S = 0.1


class HedgePolicy(object):
    """When the edge stops waiting for a reply, and which frames are stale (pure: every time is an argument, in
    seconds of one clock).  ``deadline_ms``: the budget from release (None: no deadline, no overdue bound);
    ``max_age_ms``: the longest a frame may wait behind the link (None: no limit); ``drop_stale``: a stale frame
    is dropped, not answered here."""

    def __init__(self, deadline_ms=None, max_age_ms=None, drop_stale=False):
        self.deadline_s = None if deadline_ms is None else deadline_ms / 1000.0
        self.max_age_s = None if max_age_ms is None else max_age_ms / 1000.0
        self.drop_stale = drop_stale
        self.srtt_ms = None
        self.rttvar_ms = None

    def observe(self, roundtrip_ms):
        """A reply arrived ``roundtrip_ms`` after its request was sent (RFC 6298, section 2)."""
        if self.srtt_ms is None:
            self.srtt_ms, self.rttvar_ms = roundtrip_ms, roundtrip_ms / 2.0
            return
        self.rttvar_ms = (1 - LINK_BETA) * self.rttvar_ms + LINK_BETA * abs(self.srtt_ms - roundtrip_ms)
        self.srtt_ms = (1 - LINK_ALPHA) * self.srtt_ms + LINK_ALPHA * roundtrip_ms

    def overdue_ms(self):
        """How long after sending a reply is overdue (None before the first round trip)."""
        if self.srtt_ms is None:
            return None
        return self.srtt_ms + max(LINK_K * self.rttvar_ms, OVERDUE_MIN_MS)

    def give_up_at(self, released, sent, remaining_ms, next_release=None):
        """(clock time, reason): when to stop waiting for the reply to a request released at ``released`` and
        sent at ``sent``, finishing it here taking ``remaining_ms``; ``next_release``: when the next frame is
        released (None: no next frame, or back to back).  (None, None): wait as long as the connection allows."""
        remaining = remaining_ms / 1000.0
        limits = []
        if self.deadline_s is not None:
            limits.append((released + self.deadline_s - remaining, "deadline"))
            bound = self.overdue_ms()
            if bound is not None:
                limits.append((sent + bound / 1000.0, "overdue"))
        if self.max_age_s is not None and next_release is not None:
            limits.append((next_release + self.max_age_s - remaining, "max_age"))
        return min(limits) if limits else (None, None)

    def stale(self, released, now):
        """Whether a frame released at ``released`` has waited past ``max_age`` by ``now``."""
        return self.max_age_s is not None and released is not None and now - released > self.max_age_s


def hedging(options):
    """Whether a run's options (RunOptions) ask for hedging."""
    return getattr(options, "deadline_ms", None) is not None or getattr(options, "max_age_ms", None) is not None


def policy_for(options):
    """The HedgePolicy of ``--deadline-ms`` / ``--max-age-ms`` / ``--stale``, or None without either budget."""
    if not hedging(options):
        return None
    return HedgePolicy(options.deadline_ms, options.max_age_ms, drop_stale=options.stale == "drop")


class _OnLink(object):
    """A request sent to the cloud and not answered yet."""

    def __init__(self, request_id, meta, sent_at, sent, context, before):
        self.request_id, self.meta, self.sent_at, self.sent, self.context = request_id, meta, sent_at, sent, context
        self.bytes_before = before  # the connection's bytes received when it was sent


class HedgedPipe(object):
    """The measured loop's pipe (``--inflight 1``) under a HedgePolicy: each request answered by the cloud or,
    when its reply is late, finished here by ``local`` (a LocalModel); at most one request on the link.

    ``next_release()``: the clock time the next frame is released, or None; ``adaptive`` (adaptive mode's
    listener, or None): ``reply(frame, roundtrip_ms, sent, received, context)`` for every reply that arrives,
    late ones included, ``overdue(sent, waited_ms)`` for one given up on, ``lost()`` when the connection broke
    (adaptive mode learns the link from all three); ``reconnect_s``: how long a lost connection is retried in
    the background."""

    def __init__(self, session, policy, local, next_release=lambda: None, adaptive=None, reconnect_s=60.0,
                 clock=time.perf_counter):
        self.session, self.policy, self.local = session, policy, local
        self.next_release, self.adaptive, self.reconnect_s = next_release, adaptive, reconnect_s
        self._clock = clock
        self.pending = collections.deque()  # answers ready here, or _OnLink requests, in the order sent
        self.late = None          # the _OnLink answered here whose reply the link still owes
        self.late_replies = 0     # late replies read and discarded
        self.outage = None        # the thread reconnecting a lost connection
        self.gone = None          # why the cloud was given up on (reconnecting failed): every frame answered here

    def full(self):
        return bool(self.pending)

    def settled(self):
        """Nothing is owed on the link (a switch may rebind the connection)."""
        return not self.pending and self.late is None and self.link_up()

    def link_up(self):
        if self.outage is not None and not self.outage.is_alive():
            self.outage = None
        return self.outage is None and self.gone is None

    def link_free(self):
        """Whether a request may go on the link now (a late reply that has come is read first)."""
        if self.late is not None and self.link_up():
            self._collect_late()
        return self.late is None and self.link_up()

    def send(self, array, meta, context):
        if not self.link_free():
            self.pending.append(self._answer_here(context, LOCAL, "link_busy" if self.link_up() else "outage"))
            return
        sent_at = self._clock()
        give_up, _ = self._give_up(context, sent_at)
        if give_up is not None and give_up < sent_at + (self.policy.srtt_ms or 0.0) / 1000.0:
            # a reply expected one mean round trip from now would come after the request is given up on
            self.pending.append(self._answer_here(context, LOCAL, "deadline"))
            return
        conn = self.session.conn
        try:
            request_id, sent = self._request_within(conn, meta, array, give_up, sent_at)
        except CloudLost as exc:
            self._lose(exc)
            self.pending.append(self._answer_here(context, LOCAL, "outage"))
            return
        self.pending.append(_OnLink(request_id, meta, sent_at, sent, context, conn.reader.bytes_received))

    @staticmethod
    def _request_within(conn, meta, array, give_up, now):
        """Send the request; a link that takes no byte of it until ``give_up`` (at least ``SEND_STALL_S``) ends
        the send with CloudLost (part of a frame is on the connection then: it must be reconnected).  Without
        this a large activation sent into a stalled link would block the frame for the connection's timeout."""
        if give_up is None:
            return conn.request(codec.INFER, meta, array)
        sockets.set_timeouts(conn.sock, conn.timeout, send_seconds=max(give_up - now, SEND_STALL_S))
        try:
            return conn.request(codec.INFER, meta, array)
        finally:
            sockets.set_timeouts(conn.sock, conn.timeout)

    def _give_up(self, context, sent_at):
        return self.policy.give_up_at(context.released, sent_at, self.local.remaining_ms(context.bundle_id),
                                      self.next_release())

    def next(self):
        item = self.pending.popleft()
        if not isinstance(item, _OnLink):
            return item
        context = item.context
        give_up, reason = self._give_up(context, item.sent_at)
        try:
            if self._arrives(item, give_up):
                return self._take(item)
        except CloudLost as exc:
            self._lose(exc)
            return self._answer_here(context, HEDGED, "outage", item.sent, waited_since=item.sent_at)
        self.late = item
        if self.adaptive is not None:
            self.adaptive.overdue(item.sent, (self._clock() - item.sent_at) * 1000.0)
        return self._answer_here(context, HEDGED, reason, item.sent, waited_since=item.sent_at)

    def _readable(self, timeout_s):
        conn = self.session.conn
        if conn.reader.buffered() or (conn.tls and conn.sock.pending()):
            return True
        try:
            return bool(select.select([conn.sock], [], [], max(timeout_s, 0.0))[0])
        except (OSError, ValueError) as exc:  # the socket was closed or reset under us
            raise CloudLost("lost the connection to the cloud at {} ({})".format(self.session.cloud, exc))

    def _arrives(self, item, give_up):
        """Whether the reply's first bytes come before ``give_up`` (None: within the connection's timeout)."""
        limit = item.sent_at + self.session.conn.timeout
        if give_up is not None:
            limit = min(limit, give_up)
        if self._readable(limit - self._clock()):
            return True
        if give_up is None or give_up >= item.sent_at + self.session.conn.timeout:
            raise CloudLost("no reply from the cloud at {} within {:.0f} s".format(self.session.cloud,
                                                                                 self.session.conn.timeout))
        return False

    def _take(self, item):
        """Read the reply to ``item``: (frame, round trip ms, bytes sent, bytes received, context)."""
        conn = self.session.conn
        frame = conn.answer(codec.INFER, item.meta, item.request_id)
        roundtrip_ms = (self._clock() - item.sent_at) * 1000.0
        self.policy.observe(roundtrip_ms)
        reply = (frame, roundtrip_ms, item.sent, conn.reader.bytes_received - item.bytes_before, item.context)
        if self.adaptive is not None:
            self.adaptive.reply(*reply)
        return reply

    def _collect_late(self):
        """Read the late reply if it is here (discarded: its request was answered); a link that owes it past
        the connection's timeout is taken as lost."""
        late = self.late
        try:
            if self._readable(0.0):
                self._take(late)
                self.late = None
                self.late_replies += 1
            elif self._clock() - late.sent_at > self.session.conn.timeout:
                raise CloudLost("no reply from the cloud at {} within {:.0f} s".format(self.session.cloud,
                                                                                     self.session.conn.timeout))
        except CloudLost as exc:
            self._lose(exc)

    def answer_here(self, context, reason):
        """A frame answered on this device without being sent (a stale one)."""
        return self._answer_here(context, LOCAL, reason)

    def _answer_here(self, context, path, reason, sent=0, waited_since=None):
        """The request finished on this device: (LocalAnswer, ms waited for the link, bytes sent, 0, context)."""
        waited_ms = 0.0 if waited_since is None else (self._clock() - waited_since) * 1000.0
        output, ms = self.local.finish(context.bundle_id, context.boundary, context.x)
        return LocalAnswer(output, ms, path, reason), waited_ms, sent, 0, context

    def _lose(self, exc):
        """The connection broke: nothing is owed on it any more; reconnect in the background."""
        self.late = None
        if self.adaptive is not None:
            self.adaptive.lost()
        if self.outage is not None or self.gone is not None:
            return
        say("{}; answering on the edge while reconnecting (up to {:.0f} s)".format(exc, self.reconnect_s))
        self.outage = threading.Thread(target=self._reconnect, args=(str(exc),), name="edge-reconnect", daemon=True)
        self.outage.start()

    def _reconnect(self, reason):
        try:
            self.session.reconnect(time.monotonic() + self.reconnect_s, reason)
        except (CloudLost, UserError) as exc:
            self.gone = str(exc)
            say("{}: the rest is answered on the edge".format(exc))

    def close(self):
        pass

    def abandon(self):
        self.pending.clear()
