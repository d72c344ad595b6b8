"""The measured loop of ``run-edge``: warm-up, then every batch through head,
transmission and tail, sequential or pipelined (``--inflight``), recorded for the
report, following the cloud's active bundle, feeding adaptive mode, reconnecting
or falling back to the local model when the cloud is lost.

Python 3.6 syntax: this module runs on the Jetson.
"""
import collections
import contextlib
import queue
import signal
import sys
import threading
import time

from runtime.bundle.schema import LOCAL
from runtime.edge import scoring
from runtime.edge.adaptive import PROBE_CAP_MS, PROBE_REPLY_BYTES
from runtime.edge.cadence import Cadence
from runtime.edge.client import CloudLost
from runtime.edge.console import say
from runtime.edge.data import preprocess_batch
from runtime.edge.hedge import HedgedPipe, policy_for
from runtime.edge.local import LocalPipe, LocalSession
from runtime.edge.power import RunEnergy
from runtime.edge.probe import echo_train
from runtime.edge.report import RunRecorder
from runtime.errors import UserError
from runtime.wire import codec

# what the loop keeps of a request until it is answered: the samples, the edge's ms, the bundle and split that
# ran it, its release (s from the start, and on the clock), the ms it waited for the edge, and its input and
# boundary activation (from which a hedged request is finished on the edge)
Sent = collections.namedtuple("Sent", "indices edge_ms bundle_id release_s wait_ms split released x boundary")


def _progress(total, enabled):
    """tqdm when it is installed and wanted (it is not an edge dependency)."""
    if enabled:
        try:
            from tqdm import tqdm
            return tqdm(total=total, unit="sample", file=sys.stderr, leave=False)
        except ImportError:
            pass
    return None


class _Sequential(object):
    """One request at a time (``--inflight 1``): send, wait for the reply, time the round trip.

    ``watch`` (adaptive mode: AdaptivePlanner.watch) makes a watch for each request's wait."""

    def __init__(self, conn, watch=None):
        self.conn = conn
        self.watch = watch
        self.pending = collections.deque()

    def full(self):
        return bool(self.pending)

    def settled(self):
        return not self.pending

    def send(self, array, meta, context):
        t0 = time.perf_counter()
        frame, sent, received = self.conn.infer(array, meta, self.watch() if self.watch else None)
        self.pending.append((frame, (time.perf_counter() - t0) * 1000.0, sent, received, context))

    def next(self):
        return self.pending.popleft()

    def close(self):
        pass

    def abandon(self):
        self.pending.clear()


class _Pipelined(object):
    """Up to ``depth`` requests in flight on one connection (``--inflight N``).

    The main thread runs heads and sends; a receiver thread reads one reply per
    request sent (it is handed a ticket for each, so it never waits on a frame that
    is not coming) and timestamps it on arrival.  Replies are matched to requests by
    id and handed back in the order sent.
    """

    def __init__(self, conn, depth):
        self.conn, self.depth = conn, depth
        self.pending = collections.deque()
        self._tickets, self._replies = queue.Queue(), queue.Queue()
        self._abandoned = False
        self._thread = threading.Thread(target=self._receive, name="edge-receiver", daemon=True)
        self._thread.start()

    def _receive(self):
        for request_id in iter(self._tickets.get, None):
            before = self.conn.reader.bytes_received
            try:
                frame = self.conn.answer(codec.INFER, {}, request_id)
            except Exception as exc:  # handed to the main thread, which raises it
                self._replies.put((None, 0.0, 0, exc))
                return
            self._replies.put((frame, time.perf_counter(), self.conn.reader.bytes_received - before, None))

    def full(self):
        return len(self.pending) >= self.depth

    def settled(self):
        return not self.pending

    def send(self, array, meta, context):
        t0 = time.perf_counter()
        request_id, sent = self.conn.request(codec.INFER, meta, array)
        self.pending.append((request_id, t0, sent, context))
        self._tickets.put(request_id)

    def next(self):
        frame, arrived, received, error = self._replies.get()
        if error is not None:
            raise error
        request_id, t0, sent, context = self.pending.popleft()
        return frame, (arrived - t0) * 1000.0, sent, received, context

    def close(self):
        self._tickets.put(None)
        self._thread.join(5 if self._abandoned else None)

    def abandon(self):
        """Stop waiting for the replies in flight (the connection is gone; closing it ends the receiver)."""
        self._abandoned = True
        self.pending.clear()
        self._tickets.put(None)


def measure(session, data, plan, settings, adaptive=None, fallback=None, out=None, meter=None):
    """Run every batch of ``plan`` through the session, timing each request; return the RunRecorder.

    ``settings`` (RunOptions) gives ``warmup``, ``no_follow``, ``verbose``,
    ``inflight``, ``reconnect_timeout``, ``interval_ms`` and ``start_at``.  The first
    batch is first sent ``warmup`` times (excluded).  With ``inflight`` > 1 up to that
    many requests are in flight (head of the next batch overlapping the transfer and
    tail of the previous ones); results are recorded in input order.  Unless
    ``no_follow``, a bundle activated on the cloud is switched to at the next batch
    boundary (after the requests in flight are answered); with ``adaptive`` (an
    AdaptivePlanner), a split predicted better for the bandwidth seen so far is.

    A lost connection (the server killed, restarted, shutting down) is reconnected
    with backoff for up to ``reconnect_timeout`` seconds, and the requests that had no
    reply are sent again (inference is idempotent; a reply is only taken from the
    connection its request went out on, so none is counted twice).  After that, with
    ``fallback`` (a callable returning the loaded full model) the rest runs on the
    edge alone and is marked "local" in the report; without it the run stops with the
    count done.

    The cadence (``edge.cadence.Cadence``) says when each batch is released: back to
    back by default, or every ``interval_ms`` from ``start_at``; a batch waits for its
    release (answering the requests in flight meanwhile), and the time it waited for
    the edge to be free after its release is recorded with it.

    With ``meter`` (``edge.power.open_meter``), the idle baseline is measured just before the
    measured part and the meter sampled during it; the recorder's ``energy`` is the summary.

    With ``deadline_ms`` or ``max_age_ms`` (hedging: ``edge/hedge.py``) a request whose reply is late is
    finished on the edge by the session's ``local`` (an ``edge.local.LocalModel``), frames released while the
    link still owes a late reply are answered there, and stale frames are answered there or dropped; a
    ``LocalSession`` (``--split local``) answers every request on the edge.  Every answer is recorded with its
    path.

    A run stopped before its last sample, by SIGINT or by an error (a cloud that stayed away, a refusal), keeps
    the samples done: the recorder is returned with the error in ``stopped`` (and the samples planned in
    ``planned``), for the caller to report them, marked partial, before raising it.
    """
    return _Loop(session, data, plan, settings, adaptive, fallback, out or sys.stdout, meter).run()


class _Loop(object):
    """One measured run, in steps: warm up, then send the next batch or take the next reply until done."""

    def __init__(self, session, data, plan, settings, adaptive, fallback, out, meter=None):
        self.session, self.data, self.plan, self.settings = session, data, plan, settings
        self.hedge = policy_for(settings)
        self.local = session.local  # the edge's own answer (edge.local.LocalModel): hedging, adaptive's local
        # adaptive mode chose "local": the whole model here, nothing sent
        self.local_mode = adaptive is not None and adaptive.start_local and adaptive.local
        self._hedged = None         # the one HedgedPipe of the run, when hedging
        self._aside = _ProbeAside(session, settings.reconnect_timeout) if adaptive is not None else None
        self.energy = RunEnergy(meter) if meter is not None else None
        self.adaptive, self.fallback, self.out = adaptive, fallback, out
        self.preprocess = session.manifest["input"].get("preprocess") or {}
        self.recorder = RunRecorder(scoring.for_run(session.manifest.outputs[0]["shape"], data.labels,
                                                    session.manifest["output"].get("postprocess"), data.boxes))
        self.cadence = Cadence(settings.interval_ms, settings.start_at)
        self.bar = None
        self.pipe = None
        self.switch = None  # (reason, new split, active bundle) once decided; done when nothing is in flight
        self.position = 0
        self.outstanding = collections.deque()  # (payload, meta, context) sent and not answered yet, in order
        self.resend = collections.deque()       # of those, the ones to send again on a new connection
        self.started = None
        self.interrupts = _Interrupts()

    def _make_pipe(self):
        if isinstance(self.session, LocalSession):
            return LocalPipe()
        if self.local_mode:
            return LocalPipe("adaptive")
        if self.hedge is not None:  # one for the whole run: what the link still owes outlives a switch
            if self._hedged is None:
                self._hedged = HedgedPipe(self.session, self.hedge, self.local, self._next_release,
                                          _AdaptiveListener(self) if self.adaptive is not None else None,
                                          self.settings.reconnect_timeout)
            return self._hedged
        if self.settings.inflight > 1:
            if hasattr(self.session.conn, "pipeline"):  # Triton: tritonclient's asynchronous requests
                return self.session.conn.pipeline(self.settings.inflight)
            return _Pipelined(self.session.conn, self.settings.inflight)
        return _Sequential(self.session.conn, self.adaptive.watch if self.adaptive is not None else None)

    def run(self):
        recorder, plan = self.recorder, self.plan
        first = preprocess_batch(self.data.images(plan[0]), self.preprocess)
        for _ in range(self.settings.warmup):  # excluded from every figure, counted in the report
            self.session.infer(first)
            recorder.warmup_requests += 1
        if self.local is not None:  # every way to answer on the edge timed once, before it is needed
            self.local.warm(self.session.manifest.bundle_id, self.session.head.run(first), first)
        self.bar = _progress(sum(len(b) for b in plan), not self.settings.verbose and sys.stderr.isatty())
        self.pipe = self._make_pipe()
        if self.energy is not None:
            self.energy.before(self.settings.start_at)  # the idle baseline, just before the measured part
        self.session.begin_measure()
        recorder.interval_ms = self.cadence.interval_s * 1000.0
        self.cadence.start()
        if self.energy is not None:
            self.energy.start()
        recorder.started_unix = self.cadence.started_unix
        self.started, cpu_started = self.cadence.started, time.process_time()
        recorder.planned = sum(len(b) for b in plan)
        try:
            with self.interrupts:
                while self.position < len(plan) or self.outstanding:
                    try:
                        self._step()
                    except CloudLost as exc:
                        if not self._recover(exc):
                            break
        except (KeyboardInterrupt, UserError) as exc:  # the samples done are kept: a partial report, then the error
            recorder.stopped = exc
            self.pipe.abandon()
        finally:
            recorder.reconnects = self.session.reconnects
            recorder.late_replies = self._hedged.late_replies if self._hedged is not None else 0
            if self.energy is not None:
                self.energy.stop()
            self.pipe.close()
            if self._aside is not None:
                self._aside.stopping = True
        recorder.wall_s = time.perf_counter() - self.started
        recorder.cpu_s = time.process_time() - cpu_started
        if self.energy is not None:
            recorder.energy = self.energy.summary(recorder.samples)
        self.session.end_measure(recorder)
        if self.bar is not None:
            self.bar.close()
        return recorder

    def _step(self):
        """Send again what a lost connection left unanswered, else send the next batch, else take a reply."""
        if self.resend:
            self.pipe.send(*self.resend.popleft())
            return
        more = self.position < len(self.plan)
        due = self.cadence.due_in(self.position) if more else 0.0
        if more and self.switch is None and not self.pipe.full() and not (due and self.pipe.pending):
            if due:  # the next frame is not there yet, and nothing is in flight
                time.sleep(due)
            self._send_next()
            return
        self._receive()
        if self.switch is not None and self.position >= len(self.plan):
            self.switch = None  # nothing left to run on another split
        if self.switch is not None and self.pipe.settled():  # hot swap at the batch boundary
            self._switch()

    def _next_release(self):
        """The clock time the next frame is released (None: back to back, or none left)."""
        return self.cadence.release(self.position) if self.position < len(self.plan) else None

    def _send_next(self):
        session = self.session
        release = self.cadence.release(self.position)
        indices = self.plan[self.position]
        self.position += 1
        t0 = time.perf_counter()
        released = t0 if release is None else min(release, t0)
        if self.hedge is not None and self.hedge.stale(released, t0) and self.hedge.drop_stale:
            with self.interrupts.held():
                self.recorder.drop(indices, released - self.started)
            return
        x = preprocess_batch(self.data.images(indices), self.preprocess)
        t0 = time.perf_counter()
        if self.local_mode:  # the whole model here: its output is the answer, nothing is sent
            boundary = self.local.whole.run(x)
            meta, payload = {}, boundary
        else:
            boundary = session.head.run(x)
            meta, payload = session.encode(boundary)  # edge time: head and compression
        context = Sent(indices, (time.perf_counter() - t0) * 1000.0, session.manifest.bundle_id,
                       released - self.started, (t0 - released) * 1000.0,
                       LOCAL if self.local_mode else session.split_label, released, x, boundary)
        if self.hedge is not None and self.hedge.stale(released, t0):
            self.pipe.pending.append(self.pipe.answer_here(context, "stale"))  # not sent: it waited too long
            return
        request = (payload, meta, context)
        self.outstanding.append(request)
        self.pipe.send(*request)

    def _receive(self):
        """The next reply, in the order sent: recorded, shown, and looked at for a reason to switch."""
        frame, roundtrip_ms, sent, received, context = self.pipe.next()
        if self.outstanding and self.outstanding[0][2] is context:
            self.outstanding.popleft()
        path, reason = getattr(frame, "path", "cloud"), getattr(frame, "reason", None)
        # a request answered on the edge: its edge time is the head and the rest run here, its round trip the
        # time it waited for the link (0 when never sent)
        times = {"edge_ms": context.edge_ms + getattr(frame, "local_ms", 0.0), "roundtrip_ms": roundtrip_ms,
                 "cloud_ms": frame.compute_ms, "queue_ms": frame.queue_ms, "wait_ms": context.wait_ms}
        with self.interrupts.held():  # a request's record is whole, and each sample recorded is shown
            predictions, labels = self.recorder.add(times, frame.array, self.data.targets(context.indices), sent,
                                                    received, context.bundle_id, path, reason)
            self.recorder.timeline.append((context.release_s, context.split))
            if self.settings.verbose:
                for pred, label in zip(predictions, labels):
                    self.out.write(self.recorder.scorer.describe(pred, label) + "\n")
        if self.bar is not None:
            self.bar.update(len(context.indices))
        active = frame.meta.get("active")
        if self.switch is None and self.settings.follows_active() and active and \
                active != self.session.manifest.bundle_id:
            self.switch = ("bundle {} activated on the cloud".format(active), None, active)
        elif self.switch is None and self.adaptive is not None and (path == "cloud" or self.local_mode):
            if self.local_mode:
                self.adaptive.observe_local(context.edge_ms)
                self._probe_aside()
            else:
                if self.hedge is None:  # a hedged pipe tells adaptive mode of every reply as it arrives
                    self._observe(frame, roundtrip_ms, sent, received, context)
                self._probe()
            new_split, reason = self.adaptive.decide(LOCAL if self.local_mode else self.session.manifest.split_index)
            if reason:
                self.switch = (reason, new_split, None)

    def _observe(self, frame, roundtrip_ms, sent, received, context):
        """Adaptive mode learns from a reply (a late one too: its wait is the link's)."""
        cloud_ms = frame.compute_ms + frame.queue_ms
        self.adaptive.observe(sent, received, roundtrip_ms - cloud_ms, cloud_ms=cloud_ms, edge_ms=context.edge_ms,
                              split=context.split)

    def _probe(self):
        """Adaptive mode's bandwidth probe, when it wants one, in the time before the next release."""
        more = self.position < len(self.plan)
        idle_ms = self.cadence.due_in(self.position) * 1000.0 if self.cadence.interval_s and more else None
        probe = self.adaptive.probe_size(idle_ms)
        if probe:
            cap_ms = PROBE_CAP_MS if idle_ms is None else min(PROBE_CAP_MS, idle_ms / 2)
            sent_b, back_b, probe_ms = echo_train(self.session.conn, probe, cap_ms, reply_bytes=PROBE_REPLY_BYTES)
            self.adaptive.observe(sent_b, back_b, probe_ms, probe=True)

    def _probe_aside(self):
        """At local, adaptive mode's probes go on a thread of their own (the link carries nothing else, and a probe
        that meets an outage must not hold up the frames answered here); their samples are folded in here."""
        for sent_b, back_b, probe_ms in self._aside.done():
            self.adaptive.observe(sent_b, back_b, probe_ms, probe=True)
        if not self._aside.busy():
            size = self.adaptive.probe_size()
            if size:
                self._aside.start(size, PROBE_CAP_MS)

    def _switch(self):
        """Hot swap to the decided bundle or split, nothing being in flight (or to and from adaptive mode's
        ``local``, where the connection stays bound to the last bundle, for probes and the way back)."""
        session = self.session
        reason, new_split, active = self.switch
        self.switch = None
        self.pipe.close()
        old = LOCAL if self.local_mode else session.manifest.split_index
        old_id = session.manifest.bundle_id
        self.local_mode = new_split == LOCAL
        if not self.local_mode:
            if self._aside is not None:
                self._aside.wait()  # the connection is the probes' until the last is back
            session.switch_to(bundle_id=active, split=new_split, chain_ok=new_split is not None)
            if self.adaptive is not None:
                self.adaptive.load_ms = session.load_ms(self.adaptive.load_ms)
            if self.local is not None:
                session.add_local_tail(self.local, fetch=False)  # a fetch now would cross the link that is slow
        self.pipe = self._make_pipe()
        new = LOCAL if self.local_mode else session.manifest.split_index
        self.recorder.switches.append({"after_samples": self.recorder.samples,
                                       "time_s": time.perf_counter() - self.started,
                                       "from": old_id, "from_split": old, "to": session.manifest.bundle_id,
                                       "to_split": new, "head": "whole model" if self.local_mode else
                                       session.head.name, "reason": reason})
        say("switched from split {} to split {} ({})".format(old, new, reason))

    def _recover(self, exc):
        """After a lost connection: reconnect and resend (True), or finish locally / give up (False / raise)."""
        reconnect_s = self.settings.reconnect_timeout
        say("{}; {} requests unanswered, reconnecting (up to {:.0f} s)".format(exc, len(self.outstanding),
                                                                                 reconnect_s))
        self.pipe.abandon()
        if self.adaptive is not None:
            self.adaptive.lost()  # what the unanswered request's wait said about the link stays
        try:
            self.session.reconnect(time.monotonic() + reconnect_s, str(exc))
        except CloudLost as gone:
            total = sum(len(b) for b in self.plan)
            if self.fallback is None:
                raise CloudLost("{}; {} of {} samples done. Start the edge with --fallback local (and the "
                                "full model in its cache) to finish on its own".format(gone, self.recorder.samples,
                                                                                       total))
            say("{}: running the remaining samples on the edge alone (--fallback local)".format(gone))
            rest = [request[2][0] for request in self.outstanding] + self.plan[self.position:]
            _run_locally(self.fallback(), self.data, rest, self.preprocess, self.recorder, self.bar, self.interrupts)
            self.recorder.fallback = {"after_samples": self.recorder.samples - sum(len(b) for b in rest),
                                      "time_s": time.perf_counter() - self.started, "reason": str(gone)}
            self.outstanding.clear()
            self.position = len(self.plan)
            return False
        self.pipe = self._make_pipe()
        self.resend = collections.deque(self.outstanding)
        return True


class _Interrupts(object):
    """SIGINT (Ctrl-C) during the measured part: a KeyboardInterrupt at once, as Python's own handler raises it,
    except while an answered request is being recorded (``held``), where it is raised as soon as the record is
    whole, so that a partial report counts every sample done exactly once.  Installed only in the main thread, and
    only over Python's default handler."""

    def __init__(self):
        self.recording = False
        self.pending = False
        self._installed = False

    def __enter__(self):
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, self._interrupt)
            self._installed = True
        return self

    def __exit__(self, *exc_info):
        if self._installed:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self._installed = False

    def _interrupt(self, signum, frame):
        if self.recording:
            self.pending = True
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def held(self):
        self.recording = True
        try:
            yield
        finally:
            self.recording = False
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt


class _ProbeAside(object):
    """Adaptive mode's probes at local, each on a thread of its own over the session's connection (nothing else
    uses it then); a probe that loses the connection reconnects it (unless the run is over)."""

    def __init__(self, session, reconnect_s):
        self.session, self.reconnect_s = session, reconnect_s
        self.thread = None
        self.stopping = False
        self._results = queue.Queue()

    def busy(self):
        return self.thread is not None and self.thread.is_alive()

    def start(self, size, cap_ms):
        self.thread = threading.Thread(target=self._probe, args=(size, cap_ms), name="edge-probe", daemon=True)
        self.thread.start()

    def _probe(self, size, cap_ms):
        try:
            self._results.put(echo_train(self.session.conn, size, cap_ms, reply_bytes=PROBE_REPLY_BYTES))
        except CloudLost as exc:
            if self.stopping:
                return
            try:
                self.session.reconnect(time.monotonic() + self.reconnect_s, str(exc))
            except CloudLost:
                pass  # still gone: the next probe tries again

    def done(self):
        """(bytes sent, bytes back, ms) of each probe finished since the last call."""
        out = []
        while not self._results.empty():
            out.append(self._results.get_nowait())
        return out

    def wait(self):
        if self.thread is not None:
            self.thread.join()


class _AdaptiveListener(object):
    """What a hedged pipe tells adaptive mode: each reply as it arrives (late ones too: their wait is the link's),
    each request given up on (a censored sample: the link took at least that long), a lost connection."""

    def __init__(self, loop):
        self.loop = loop

    def reply(self, frame, roundtrip_ms, sent, received, context):
        self.loop._observe(frame, roundtrip_ms, sent, received, context)

    def overdue(self, sent, waited_ms):
        self.loop.adaptive.watch().overdue(sent, waited_ms)

    def lost(self):
        self.loop.adaptive.lost()


def _run_locally(model, data, batches_left, preprocess, recorder, bar, interrupts):
    """The full model on the edge for the batches the cloud did not answer (``--fallback local``)."""
    runner, bundle_id = model
    for indices in batches_left:
        x = preprocess_batch(data.images(indices), preprocess)
        t0 = time.perf_counter()
        y = runner.run(x)
        with interrupts.held():
            recorder.add_local((time.perf_counter() - t0) * 1000.0, y, data.targets(indices), bundle_id)
        if bar is not None:
            bar.update(len(indices))
