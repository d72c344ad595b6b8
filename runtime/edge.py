"""run-edge: run the head on this device, the tail on the cloud, and report as the seed did.

The edge asks the cloud which bundle to use (the one for ``--split``, or the one
active for its model), takes its head from the local cache or fetches it over the
same connection, and follows activations of other bundles at batch boundaries
(hot swap, ``EdgeSession.switch_to``).

Needs numpy and onnxruntime only (torch for ``--backend torchscript``).
Python 3.6 syntax: this module runs on the Jetson.
"""
import collections
import random
import select
import socket
import sys
import threading
import time

import queue

from . import protocol as p
from .backends import load_part
from .data import batches, open_dataset, preprocess_batch
from .deploy import BundleCache
from .errors import UserError
from .manifest import KIND_SPLIT, Manifest, ManifestError, validate
from .adaptive import PROBE_CAP_MS, PROBE_REPLY_BYTES
from .cadence import Cadence
from .profile import echo_train
from .report import RunRecorder, format_report, write_report
from .security import PLAIN, TOKEN_ENV, inference_proof
from .spin import SpinPolicy

FORMAT_OF_BACKEND = {"onnx": "onnx", "torchscript": "torchscript"}


def _say(message):
    sys.stderr.write("run-edge: {}\n".format(message))
    sys.stderr.flush()


BUSY_POLL_LEAD_S = 0.0005  # start spinning this long before the reply is expected ...
BUSY_POLL_MAX_S = 0.002    # ... and spin at most this long before sleeping in recv
LOADED_HEADS = 3  # heads kept loaded per edge (adaptive switches back and forth between a few)
RECONNECT_FIRST_S = 0.1    # a lost connection is retried after up to this long (full jitter) ...
RECONNECT_MAX_S = 5.0      # ... doubling each attempt up to this, until --reconnect-timeout


class CloudLost(UserError):
    """The connection to the cloud broke (closed, reset, timed out, or the server shut down): the
    requests in flight may be sent again on a new connection."""


_THREAD_CLOCK = getattr(time, "CLOCK_THREAD_CPUTIME_ID", None)


def _thread_cpu():
    """This thread's CPU time in seconds (time.thread_time is Python 3.7+)."""
    return time.clock_gettime(_THREAD_CLOCK) if _THREAD_CLOCK is not None else time.process_time()


RETRY_CODES = ("shutting_down", "busy")  # ERROR codes that mean: this server, not this request


class CloudConnection(object):
    """One TCP connection to serve-cloud, speaking the protocol of docs/PROTOCOL.md.

    With ``busy_poll`` (run-edge's default), ``infer`` waits for its reply in two
    steps: asleep in ``select`` until shortly before the reply is expected (the mean
    of the last round trips), then spinning on non-blocking receives for at most
    2 ms.  A reply that lands on a spinning thread is handled at once; one that has
    to wake a sleeping thread costs about 0.15 ms more on loopback here (bench/speed.py).
    The spin costs the edge at most 2.5 ms of CPU per request, and backs off when it
    does not pay: its reply came later, or it was starved of CPU (``spin``, runtime/spin.py).
    """

    def __init__(self, address, timeout=30.0, max_frame_bytes=p.DEFAULT_MAX_FRAME_BYTES, busy_poll=False,
                 security=None):
        host, port = p.parse_address(address)
        self.address = address
        self.timeout = timeout
        security = security or PLAIN
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise UserError("cannot connect to the cloud at {} ({}); is `cli.py serve-cloud` running there?".format(
                address, exc.strerror or exc))
        self.sock = security.wrap(sock, host, address)
        self.tls = p.is_tls(self.sock)
        p.set_timeouts(self.sock, timeout)
        p.tune_socket(self.sock)
        self.reader = p.FrameReader(self.sock, max_frame_bytes, allowed_types=p.FROM_CLOUD)
        self._waiting = timeout
        self.busy_poll = busy_poll and not self.tls  # TLS has no non-blocking peek to spin on
        self._expected_s = None  # smoothed round trip of infer()
        self.spin = SpinPolicy()
        self._next_id = 1
        if security.token:
            self.authenticate(security.token)

    def authenticate(self, token):
        """Prove the inference token (docs/PROTOCOL.md, AUTH): the token itself never leaves."""
        request_id, _ = self.send(p.AUTH, {})
        nonce = self.expect(p.CHALLENGE, request_id).meta.get("nonce")
        if not isinstance(nonce, str) or len(nonce) < 16:
            raise p.ProtocolError("bad_reply", "the cloud's CHALLENGE carries no usable nonce")
        request_id, _ = self.send(p.AUTH, {"proof": inference_proof(token, nonce)})
        try:
            return self.expect(p.DONE, request_id).meta
        except p.RemoteError as exc:
            if exc.code == "bad_token":
                raise UserError("the cloud at {} refused the inference token; check --token / ${} on both "
                                "sides".format(self.address, TOKEN_ENV))
            raise

    def send(self, type_, meta, array=None):
        request_id = self._next_id
        self._next_id += 1
        try:
            sent = p.send_frame(self.sock, type_, request_id, meta, array)
        except OSError as exc:  # reset, broken pipe, send timeout
            raise self._lost(exc)
        return request_id, sent

    def _lost(self, exc):
        """The error for a connection that broke with ``exc``: CloudLost (worth reconnecting), or a
        UserError where the cloud refused this client's TLS session before answering anything."""
        if self.tls and not self.reader.bytes_received and (type(exc).__module__ == "ssl" or
                                                            isinstance(exc, p.PeerClosed)):
            return UserError("the cloud at {} ended the TLS session ({}); if it requires client certificates "
                             "(mutual TLS), pass --tls-cert/--tls-key signed by a CA it trusts".format(
                                 self.address, getattr(exc, "reason", None) or exc))
        hint = "" if self.tls or self.reader.bytes_received else \
            "; if serve-cloud runs with --tls-cert, connect with --tls-ca (or --tls)"
        return CloudLost("lost the connection to the cloud at {} ({}){}".format(self.address, exc, hint))

    def receive(self, tensor_check=None):
        """The next frame; NOTICE frames (the cloud explaining a wait) are shown and waited past."""
        while True:
            try:
                frame = self.reader.read(tensor_check)
            except p.PeerClosed as exc:
                if self.tls and not self.reader.bytes_received:
                    raise self._lost(exc)
                raise CloudLost("the cloud at {} closed the connection".format(self.address))
            except socket.timeout:
                raise CloudLost("no reply from the cloud at {} within {:.0f} s".format(self.address, self._waiting))
            except p.ProtocolError as exc:
                if exc.code != "truncated":
                    raise
                raise CloudLost("the cloud at {} closed the connection in the middle of a reply".format(self.address))
            except OSError as exc:  # reset by the peer
                raise self._lost(exc)
            finally:
                if self._waiting != self.timeout:
                    p.set_timeouts(self.sock, self.timeout)
                    self._waiting = self.timeout
            if frame.type == p.ERROR:
                code = frame.meta.get("code", "error")
                if code in RETRY_CODES:
                    raise CloudLost("cloud: {}".format(frame.meta.get("message", "")))
                raise p.RemoteError(code, "cloud: {}".format(frame.meta.get("message", "")))
            if frame.type != p.NOTICE:
                return frame
            _say("cloud: {}".format(frame.meta.get("message", "")))
            self._waiting = max(self.timeout, float(frame.meta.get("wait_s", 0)))
            p.set_timeouts(self.sock, self._waiting)

    def expect(self, type_, request_id=None):
        frame = self.receive()
        if frame.type != type_:
            raise p.ProtocolError("bad_reply", "expected {}, got {}".format(p.TYPE_NAMES[type_], frame.type_name))
        if request_id is not None and frame.request_id != request_id:
            raise p.ProtocolError("bad_reply", "reply to request {} while waiting for {}".format(
                frame.request_id, request_id))
        return frame

    def hello(self, meta):
        request_id, _ = self.send(p.HELLO, dict(meta, protocol=p.VERSION))
        return self.expect(p.WELCOME, request_id).meta

    def status(self):
        """The server's counters and state (a STATUS request)."""
        request_id, _ = self.send(p.STATUS, {})
        return self.expect(p.DONE, request_id).meta.get("status", {})

    def infer(self, array, meta=None, watch=None):
        """Send one activation, wait for its result; return (RESULT frame, bytes sent, bytes received).

        With ``watch`` (adaptive.AdaptivePlanner.watch()), a reply that is overdue is reported to it while
        the edge waits (``watch_reply``)."""
        before = self.reader.bytes_received
        t0 = time.perf_counter()
        request_id, sent = self.send(p.INFER, meta or {}, array)
        if self.busy_poll and self._expected_s is not None:
            self._await_reply(t0)
        if watch is not None:
            self.watch_reply(t0, sent, watch)
        frame = self.expect(p.RESULT, request_id)
        took = time.perf_counter() - t0
        self._expected_s = took if self._expected_s is None else 0.8 * self._expected_s + 0.2 * took
        return frame, sent, self.reader.bytes_received - before

    def _await_reply(self, t0):
        """Busy poll (see runtime/spin.py): asleep until shortly before the reply is due, then spinning for it,
        unless recent spins did not pay."""
        if not self.spin.should_spin():
            return  # the blocking read that follows sleeps until the reply is here
        asleep = t0 + self._expected_s - BUSY_POLL_LEAD_S - time.perf_counter()
        try:
            if asleep > 0:
                select.select([self.sock], [], [], asleep)  # returns at once if the reply is already here
            wall, cpu = time.perf_counter(), _thread_cpu()
            hit = self.reader.poll(BUSY_POLL_MAX_S)
            self.spin.record(hit, time.perf_counter() - wall, _thread_cpu() - cpu)
        except OSError as exc:  # reset by the peer while we waited: as lost as in receive()
            raise self._lost(exc)

    def watch_reply(self, t0, sent, watch):
        """Wait until a reply's first bytes are here, telling ``watch.overdue(sent, waited_ms)`` each time it is
        overdue: at ``watch.after_ms(sent)`` after ``t0`` (time.perf_counter()), then at twice that wait, and so
        on up to the connection's timeout, after which it raises CloudLost."""
        if self.reader.buffered() or (self.tls and self.sock.pending()):
            return
        due_ms = watch.after_ms(sent)
        while True:
            remaining = t0 + due_ms / 1000.0 - time.perf_counter()
            try:
                if select.select([self.sock], [], [], max(remaining, 0.0))[0]:
                    return
            except OSError as exc:
                raise self._lost(exc)
            waited_ms = (time.perf_counter() - t0) * 1000.0
            watch.overdue(sent, waited_ms)
            if waited_ms >= self._waiting * 1000.0:
                raise CloudLost("no reply from the cloud at {} within {:.0f} s".format(self.address, self._waiting))
            due_ms = min(2.0 * waited_ms, self._waiting * 1000.0)

    def fetch(self, bundle_id, formats, directory, entries, part="head"):
        from .deploy import receive_files
        self.send(p.FETCH, {"bundle_id": bundle_id, "part": part, "formats": list(formats)})
        return receive_files(self.reader, directory, entries, what="fetch of {}".format(bundle_id))

    def close(self):
        try:
            p.send_frame(self.sock, p.BYE, 0, {})
        except OSError:
            pass
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a receiver thread blocked on this socket
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass


class EdgeSession(object):
    """The edge's side of a run: connection, cache, the bundle in use and its loaded head.

    ``switch_to`` is the hot-swap mechanism: at a batch boundary, bind the
    connection to another bundle of the same model (by id, or by split), fetch and
    verify its head if it is not cached, load it, and go on.
    """

    def __init__(self, cloud, model, cache, cache_keep=8, backend="onnx", device="auto", threads=0, timeout=30.0,
                 compress="none", codec="none", busy_poll=False, security=None):
        if backend not in FORMAT_OF_BACKEND:
            raise UserError("unknown backend {!r}".format(backend))
        from .compression import Encoder
        self.encoder = Encoder(compress, codec)
        self.model = model
        self.backend, self.device, self.threads = backend, device, threads
        self.formats = (FORMAT_OF_BACKEND[backend],)
        self.cache = BundleCache(cache, cache_keep, log=_say)
        self.cloud, self.timeout, self.busy_poll, self.security = cloud, timeout, busy_poll, security
        self.conn = CloudConnection(cloud, timeout, busy_poll=busy_poll, security=security)
        self.reconnects = []  # one record per outage survived
        self.manifest = None
        self.head = None
        self.welcome = None
        self.fetches = []
        self.segments = None  # a SegmentLoader once the segments bundle is here (adaptive mode)
        self.chained = []     # switches served by a chain of cached segments instead of a fetch
        self._runners = collections.OrderedDict()  # bundle id -> its loaded head, the last LOADED_HEADS used

    def use_segments(self, manifest):
        """Let switches to uncached splits run the head as a chain of this segments bundle's pieces."""
        from .backends.chain import SegmentLoader
        self.segments = SegmentLoader(manifest, self.backend, self.device, self.threads)

    def switch_to(self, bundle_id=None, split=None, chain_ok=False):
        """Use the cloud's bundle ``bundle_id`` (or its bundle for ``split``; neither: the active one).

        With ``chain_ok``, a head that is not cached is run as a chain of the cached
        segments (same weights) rather than fetched: adaptive switches happen when the
        link has just slowed down, the worst moment to download a head over it.
        """
        welcome = self.conn.hello({"role": "edge", "model": self.model, "split": split, "bundle_id": bundle_id})
        data = validate(welcome.get("manifest"), "the cloud's manifest")
        codec = self.encoder.codec
        if codec != "none" and codec not in welcome.get("codecs", ()):
            from .compression import PIP_NAMES
            raise UserError("the cloud cannot decode --codec {} (it has {}); install it there (pip install {}) or "
                            "choose another codec".format(codec, ", ".join(welcome.get("codecs", ())) or "none",
                                                          PIP_NAMES[codec]))
        if data["bundle_id"] != welcome.get("bundle_id") or (bundle_id and data["bundle_id"] != bundle_id):
            raise p.ProtocolError("bad_reply", "the cloud answered with bundle {} for {}".format(
                data["bundle_id"], bundle_id or "split {}".format(split)))
        manifest = self.cache.lookup(data, self.formats)
        if manifest is None and chain_ok and self._segments_match(data):
            self.head = self.segments.head(data["split"]["index"])
            self.manifest, self.welcome = Manifest(None, data), welcome  # no directory: the head is a chain
            self.chained.append({"bundle_id": data["bundle_id"], "split": data["split"]["index"]})
            _say("split {}: head not cached, running it as a chain of {} cached segments (nothing fetched)".format(
                data["split"]["index"], data["split"]["index"]))
            return self.manifest
        if manifest is None:
            size = sum(f["bytes"] for f in _head_files(data, self.formats))
            _say("fetching the head of {} ({} split {}, {:.1f} MiB) from the cloud".format(
                data["bundle_id"], data["model"]["id"], data["split"]["index"], size / 1048576.0))
            manifest, received, seconds = self.cache.fetch(self.conn, data, self.formats)
            self.fetches.append({"bundle_id": data["bundle_id"], "split": data["split"]["index"],
                                 "bytes": received, "seconds": seconds})
            _say("fetched and verified {} in {:.2f} s".format(data["bundle_id"], seconds))
        self.head = self._runners.pop(manifest.bundle_id, None) or \
            load_part(manifest, "head", self.backend, self.device, self.threads)
        self._runners[manifest.bundle_id] = self.head  # kept loaded: switching back costs no load
        while len(self._runners) > LOADED_HEADS:
            self._runners.popitem(last=False)
        self.manifest, self.welcome = manifest, welcome
        return manifest

    def preload(self, splits):
        """Load the heads of ``splits`` now (fetching or chaining as a switch would), then come back to the
        current bundle: a later switch to one of them costs no load (adaptive mode, before measuring)."""
        current = self.manifest.bundle_id
        for split in splits:
            self.switch_to(split=split, chain_ok=True)
        self.switch_to(bundle_id=current)

    def _segments_match(self, data):
        if self.segments is None:
            return False
        seg = self.segments.manifest
        k = data["split"]["index"]
        same = ("sha256", "random_init", "random_seed")
        return (seg.model_id == data["model"]["id"] and 0 <= k < len(seg["points"])
                and all(seg["model"]["weights"].get(f) == data["model"]["weights"].get(f) for f in same)
                and seg["points"][k]["name"] == data["split"]["name"]
                and list(seg["points"][k]["shape"]) == list(data["boundary"]["shape"][1:]))

    def encode(self, boundary):
        """(frame meta, tensor to send) for one boundary activation, compressed as asked."""
        encoding, payload = self.encoder.encode(boundary)
        return ({"encoding": encoding} if encoding else {}), payload

    def infer(self, x):
        """Head here, tail there: (output, edge_ms, roundtrip_ms, cloud_ms, bytes sent, bytes received, meta)."""
        t0 = time.perf_counter()
        meta, payload = self.encode(self.head.run(x))
        t1 = time.perf_counter()
        frame, sent, received = self.conn.infer(payload, meta)
        t2 = time.perf_counter()
        return (frame.array, (t1 - t0) * 1000.0, (t2 - t1) * 1000.0, frame.compute_ms,
                sent, received, frame.meta)

    def reconnect(self, give_up_at, reason):
        """A new connection bound to the same bundle, tried with capped exponential backoff and full
        jitter until ``give_up_at`` (time.monotonic()); raises CloudLost after that."""
        lost_at = time.monotonic()
        self.conn.close()
        delay, attempts = RECONNECT_FIRST_S, 0
        while True:
            attempts += 1
            try:
                conn = CloudConnection(self.cloud, self.timeout, busy_poll=self.busy_poll, security=self.security)
                try:
                    welcome = conn.hello({"role": "edge", "model": self.model, "split": None,
                                          "bundle_id": self.manifest.bundle_id})
                except BaseException:
                    conn.close()
                    raise
                if welcome.get("bundle_id") != self.manifest.bundle_id:
                    conn.close()
                    raise UserError("after reconnecting, the cloud serves bundle {} instead of {}".format(
                        welcome.get("bundle_id"), self.manifest.bundle_id))
                self.conn = conn
                record = {"lost": reason, "attempts": attempts, "down_s": round(time.monotonic() - lost_at, 3)}
                self.reconnects.append(record)
                _say("reconnected to the cloud after {:.2f} s ({} attempts)".format(record["down_s"], attempts))
                return record
            except CloudLost:
                pass
            except p.RemoteError:
                raise  # the cloud answered and refused (token, bundle): trying again will not help
            except UserError as exc:
                if "cannot connect" not in str(exc):
                    raise
            now = time.monotonic()
            if now >= give_up_at:
                raise CloudLost("the cloud at {} has been unreachable for {:.0f} s ({} attempts to reconnect)".format(
                    self.cloud, now - lost_at, attempts))
            time.sleep(min(random.uniform(0, delay), give_up_at - now))  # full jitter
            delay = min(delay * 2, RECONNECT_MAX_S)

    def close(self):
        self.conn.close()


def print_status(cloud, timeout=10.0, security=None, out=None):
    """The status command: the server's counters as JSON."""
    import json
    conn = CloudConnection(cloud, timeout, security=security)
    try:
        (out or sys.stdout).write(json.dumps(conn.status(), indent=1, sort_keys=True) + "\n")
    finally:
        conn.close()


def find_full_model(cache, model, backend="onnx"):
    """A bundle of ``model`` in the edge's cache whose head is the whole model (no tail), or None."""
    from .store import BundleStore
    fmt = FORMAT_OF_BACKEND[backend]
    good, _ = BundleStore(cache).scan(KIND_SPLIT)
    for manifest in sorted(good, key=lambda m: -m.split_index):
        if manifest.model_id == model and manifest.part("tail") is None and manifest.part("head") is not None:
            try:
                manifest.verify_files(parts=("head",), formats=(fmt,))
            except ManifestError:
                continue
            return manifest
    return None


def _head_files(data, formats):
    head = data["parts"].get("head")
    return [f for fmt, f in head["files"].items() if fmt in formats] if head else []


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
                frame = self.conn.expect(p.RESULT, request_id)
            except Exception as exc:  # handed to the main thread, which raises it
                self._replies.put((None, 0.0, 0, exc))
                return
            self._replies.put((frame, time.perf_counter(), self.conn.reader.bytes_received - before, None))

    def full(self):
        return len(self.pending) >= self.depth

    def send(self, array, meta, context):
        t0 = time.perf_counter()
        request_id, sent = self.conn.send(p.INFER, meta, array)
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


def run_edge(cloud, model="resnet50", split=None, cache="artifacts", backend="onnx", device="auto",
             dataset="cifar100", data_dir="data", limit=100, batch_size=1, shuffle=False, seed=0, warmup=3,
             verbose=False, report=None, timeout=30.0, threads=0, cache_keep=8, follow=True, out=None,
             plan_options=None, adaptive=False, inflight=1, compress="none", codec="none", busy_poll=True,
             reconnect_s=60.0, fallback="none", security=None, interval_ms=0.0, start_at=None):
    """The run-edge command.  Returns the report dict; prints the seed's report to ``out``."""
    out = out or sys.stdout
    if batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if inflight < 1:
        raise UserError("--inflight must be at least 1")
    if adaptive and inflight > 1:
        raise UserError("--adaptive needs --inflight 1: pipelined round trips include the wait behind earlier "
                        "requests, which would read as a slow link")
    # busy polling only where one thread waits for one reply: a spinning receiver thread would hold the GIL
    if fallback not in ("none", "local"):
        raise UserError("--fallback must be none or local")
    full = find_full_model(cache, model, backend) if fallback == "local" else None
    if fallback == "local" and full is None:
        raise UserError("--fallback local needs the full model of {} in {}: a bundle of its last split point, whose "
                        "tail is empty (resnet50: split 22; `cli.py layers` lists them); fetch it with one "
                        "`run-edge --split 22` or copy it there with `push --to`".format(model, cache))
    session = EdgeSession(cloud, model, cache, cache_keep, backend, device, threads, timeout, compress, codec,
                          busy_poll=busy_poll and inflight == 1, security=security)
    planned, adapter = None, None
    try:
        if split == "auto" or adaptive:
            from .adaptive import AdaptivePlanner
            from .plan import make_plan
            plan_options = plan_options or {}
            objective = plan_options.get("objective", "latency")
            profiles = {}
            rows, choice, network = make_plan(session, batch_size, plan_options.get("bandwidth"),
                                              plan_options.get("rtt"), objective, profiles=profiles,
                                              interval_ms=interval_ms)
            planned = {"choice": choice, "network": network, "objective": objective}
            if split == "auto":
                split = choice["split"]
                _say("planned split {} ({}): predicted {:.3f} ms at {:.1f} Mbit/s, rtt {:.3f} ms".format(
                    split, choice["name"], choice["latency_ms"], network["bandwidth_mbps"], network["rtt_ms"]))
            if adaptive:
                adapter = AdaptivePlanner(profiles["edge"], profiles["cloud"], network, batch_size, objective,
                                          interval_ms=interval_ms)
        manifest = session.switch_to(split=split)
        if adapter is not None:
            alternates = adapter.alternates(manifest.split_index)
            if alternates:
                _say("preloading the heads of split {} (the plan for a link 4x slower or faster)".format(
                    " and ".join(str(k) for k in alternates)))
                session.preload(alternates)
        num_classes = manifest["output"]["shape"][-1]
        data = open_dataset(dataset, manifest["input"], num_classes, limit=limit, seed=seed, data_dir=data_dir)
        plan = batches(data, batch_size, limit, shuffle, seed)
        if not plan:
            raise UserError("the dataset {} is empty".format(dataset))
        local = (lambda: (load_part(full, "head", backend, device, threads), full.bundle_id)) if full else None
        recorder = measure(session, data, plan, warmup, follow, verbose, out, adapter, inflight, reconnect_s, local,
                           Cadence(interval_ms, start_at))
    finally:
        session.close()

    summary = recorder.summary()
    out.write(format_report(summary, recorder.samples, len(plan), recorder.warmup_requests) + "\n")
    if recorder.switches:
        out.write("Switches: {}\n".format(", ".join("split {} -> {} after {} samples ({:.2f} s)".format(
            s["from_split"], s["to_split"], s["after_samples"], s["time_s"]) for s in recorder.switches)))
    welcome = session.welcome
    info = {"model": manifest.model_id, "split": manifest.split_index, "bundle_id": manifest.bundle_id,
            "backend": session.head.name, "provider": session.head.provider,
            "cloud_backend": welcome.get("backend"), "cloud_provider": welcome.get("provider"),
            "dataset": data.name, "batch_size": batch_size, "inflight": inflight,
            "compress": compress, "codec": codec, "busy_poll": session.conn.busy_poll, "random_init": manifest["model"]["weights"]["random_init"],
            "fetches": session.fetches, "chained_heads": session.chained, "switches": recorder.switches,
            "plan": planned, "probes": adapter.probes if adapter is not None else 0,
            "stalls": adapter.stalls if adapter is not None else 0,
            "compute_scales": {"edge": adapter.edge_scale, "cloud": adapter.cloud_scale} if adapter else None,
            "busy_poll_spins": session.conn.spin.spins, "busy_poll_starved": session.conn.spin.starved,
            "busy_poll_missed": session.conn.spin.missed}
    if report:
        return write_report(report, info, recorder)
    info.update(summary)
    return info
