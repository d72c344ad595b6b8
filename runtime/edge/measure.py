"""The measured loop of ``run-edge``: warm-up, then every batch through head,
transmission and tail, sequential or pipelined (``--inflight``), recorded for the
report, following the cloud's active bundle, feeding adaptive mode, reconnecting
or falling back to the local model when the cloud is lost.

Python 3.6 syntax: this module runs on the Jetson.
"""
import collections
import queue
import sys
import threading
import time

from runtime.edge.adaptive import PROBE_CAP_MS, PROBE_REPLY_BYTES
from runtime.edge.cadence import Cadence
from runtime.edge.client import CloudLost
from runtime.edge.data import preprocess_batch
from runtime.edge.probe import echo_train
from runtime.edge.report import RunRecorder, _say
from runtime.wire import codec


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
                frame = self.conn.expect(codec.RESULT, request_id)
            except Exception as exc:  # handed to the main thread, which raises it
                self._replies.put((None, 0.0, 0, exc))
                return
            self._replies.put((frame, time.perf_counter(), self.conn.reader.bytes_received - before, None))

    def full(self):
        return len(self.pending) >= self.depth

    def send(self, array, meta, context):
        t0 = time.perf_counter()
        request_id, sent = self.conn.send(codec.INFER, meta, array)
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


def measure(session, data, plan, warmup=3, follow=True, verbose=False, out=None, adaptive=None, inflight=1,
            reconnect_s=60.0, fallback=None, cadence=None):
    """Run every batch of ``plan`` through the session, timing each request; return the RunRecorder.

    The first batch is first sent ``warmup`` times (excluded).  With ``inflight`` > 1
    up to that many requests are in flight (head of the next batch overlapping the
    transfer and tail of the previous ones); results are recorded in input order.
    With ``follow``, a bundle activated on the cloud is switched to at the next batch
    boundary (after the requests in flight are answered); with ``adaptive`` (an
    AdaptivePlanner), a split predicted better for the bandwidth seen so far is.

    A lost connection (the server killed, restarted, shutting down) is reconnected
    with backoff for up to ``reconnect_s`` seconds, and the requests that had no reply
    are sent again (inference is idempotent; a reply is only taken from the connection
    its request went out on, so none is counted twice).  After that, with ``fallback``
    (a callable returning the loaded full model) the rest runs on the edge alone and
    is marked "local" in the report; without it the run stops with the count done.

    ``cadence`` (runtime.cadence.Cadence) says when each batch is released: back to
    back by default, or every ``--interval-ms`` from ``--start-at``; a batch waits for
    its release (answering the requests in flight meanwhile), and the time it waited
    for the edge to be free after its release is recorded with it.
    """
    out = out or sys.stdout
    preprocess = session.manifest["input"].get("preprocess") or {}
    recorder = RunRecorder()
    first = preprocess_batch(data.images(plan[0]), preprocess)
    for _ in range(warmup):  # excluded from every figure, counted in the report
        session.infer(first)
        recorder.warmup_requests += 1
    bar = _progress(sum(len(b) for b in plan), not verbose and sys.stderr.isatty())
    watch = adaptive.watch if adaptive is not None else None
    make_pipe = (lambda: _Pipelined(session.conn, inflight)) if inflight > 1 else \
        (lambda: _Sequential(session.conn, watch))
    pipe = make_pipe()
    switch = None  # (reason, new split, active bundle) once decided; done when nothing is in flight
    cadence = cadence or Cadence()
    recorder.interval_ms = cadence.interval_s * 1000.0
    cadence.start()
    recorder.started_unix = cadence.started_unix
    started, cpu_started = cadence.started, time.process_time()
    position = 0
    outstanding = collections.deque()  # (payload, meta, context) sent and not answered yet, in order
    resend = collections.deque()       # of those, the ones to send again on a new connection
    try:
        while position < len(plan) or outstanding:
            try:
                if resend:
                    pipe.send(*resend.popleft())
                    continue
                due = cadence.due_in(position) if position < len(plan) else 0.0
                if position < len(plan) and switch is None and not pipe.full() and not (due and pipe.pending):
                    if due:  # the next frame is not there yet, and nothing is in flight
                        time.sleep(due)
                    release = cadence.release(position)
                    indices = plan[position]
                    position += 1
                    x = preprocess_batch(data.images(indices), preprocess)
                    t0 = time.perf_counter()
                    meta, payload = session.encode(session.head.run(x))  # edge time: head and compression
                    released = t0 if release is None else min(release, t0)
                    request = (payload, meta, (indices, (time.perf_counter() - t0) * 1000.0,
                                               session.manifest.bundle_id, released - started,
                                               (t0 - released) * 1000.0, session.manifest.split_index))
                    outstanding.append(request)
                    pipe.send(*request)
                    continue
                frame, roundtrip_ms, sent, received, (indices, edge_ms, bundle_id, release_s, wait_ms,
                                                      split) = pipe.next()
                outstanding.popleft()
                meta = frame.meta
                cloud_ms, queue_ms = frame.compute_ms, frame.queue_ms
                predictions = frame.array.reshape(len(indices), -1).argmax(axis=1)
                labels = data.labels[indices]
                recorder.add(edge_ms, roundtrip_ms, cloud_ms, predictions, labels, sent, received, bundle_id,
                             queue_ms, wait_ms)
                recorder.timeline.append((release_s, split))
                if verbose:
                    for pred, label in zip(predictions, labels):
                        out.write("Prediction: {} / Ground Truth: {}\n".format(int(pred), int(label)))
                if bar is not None:
                    bar.update(len(indices))
                active = meta.get("active")
                if switch is None and follow and active and active != session.manifest.bundle_id:
                    switch = ("bundle {} activated on the cloud".format(active), None, active)
                elif switch is None and adaptive is not None:
                    adaptive.observe(sent, received, roundtrip_ms - cloud_ms - queue_ms,
                                     cloud_ms=cloud_ms + queue_ms, edge_ms=edge_ms, split=split)
                    idle_ms = cadence.due_in(position) * 1000.0 if cadence.interval_s and position < len(plan) \
                        else None
                    probe = adaptive.probe_size(idle_ms)
                    if probe:
                        cap_ms = PROBE_CAP_MS if idle_ms is None else min(PROBE_CAP_MS, idle_ms / 2)
                        sent_b, back_b, probe_ms = echo_train(session.conn, probe, cap_ms,
                                                              reply_bytes=PROBE_REPLY_BYTES)
                        adaptive.observe(sent_b, back_b, probe_ms, probe=True)
                    new_split, reason = adaptive.decide(session.manifest.split_index)
                    if reason:
                        switch = (reason, new_split, None)
                if switch is not None and position >= len(plan):
                    switch = None  # nothing left to run on another split
                if switch is not None and not pipe.pending:  # hot swap at the batch boundary
                    reason, new_split, active = switch
                    switch = None
                    pipe.close()
                    old = session.manifest
                    session.switch_to(bundle_id=active, split=new_split, chain_ok=new_split is not None)
                    pipe = make_pipe()
                    recorder.switches.append({"after_samples": recorder.samples,
                                              "time_s": time.perf_counter() - started,
                                              "from": old.bundle_id, "from_split": old.split_index,
                                              "to": session.manifest.bundle_id,
                                              "to_split": session.manifest.split_index,
                                              "head": session.head.name, "reason": reason})
                    _say("switched from split {} to split {} ({})".format(old.split_index,
                                                                         session.manifest.split_index, reason))
            except CloudLost as exc:
                _say("{}; {} requests unanswered, reconnecting (up to {:.0f} s)".format(exc, len(outstanding),
                                                                                         reconnect_s))
                pipe.abandon()
                if adaptive is not None:
                    adaptive.lost()  # what the unanswered request's wait said about the link stays
                try:
                    session.reconnect(time.monotonic() + reconnect_s, str(exc))
                except CloudLost as gone:
                    if fallback is None:
                        raise CloudLost("{}; {} of {} samples done. Start the edge with --fallback local (and the "
                                        "full model in its cache) to finish on its own".format(
                                            gone, recorder.samples, sum(len(b) for b in plan)))
                    _say("{}: running the remaining samples on the edge alone (--fallback local)".format(gone))
                    rest = [request[2][0] for request in outstanding] + plan[position:]
                    _run_locally(fallback(), data, rest, preprocess, recorder, bar)
                    recorder.fallback = {"after_samples": recorder.samples - sum(len(b) for b in rest),
                                         "time_s": time.perf_counter() - started, "reason": str(gone)}
                    outstanding.clear()
                    position = len(plan)
                    break
                pipe = make_pipe()
                resend = collections.deque(outstanding)
        recorder.reconnects = session.reconnects
    finally:
        pipe.close()
    recorder.wall_s = time.perf_counter() - started
    recorder.cpu_s = time.process_time() - cpu_started
    if bar is not None:
        bar.close()
    return recorder


def _run_locally(model, data, batches_left, preprocess, recorder, bar):
    """The full model on the edge for the batches the cloud did not answer (``--fallback local``)."""
    runner, bundle_id = model
    for indices in batches_left:
        x = preprocess_batch(data.images(indices), preprocess)
        t0 = time.perf_counter()
        y = runner.run(x)
        recorder.add_local((time.perf_counter() - t0) * 1000.0, y.reshape(len(indices), -1).argmax(axis=1),
                           data.labels[indices], bundle_id)
        if bar is not None:
            bar.update(len(indices))
