"""The edge's connection to serve-cloud: one class, every client verb.

``CloudConnection`` greets the cloud (AUTH / CHALLENGE, within ``GREETING_TIMEOUT_S``: a
service on that port that answers otherwise, or not at all, is not serve-cloud,
said in one line), authenticates (AUTH / DONE), binds a bundle
(HELLO / WELCOME), infers (INFER / RESULT, with an optional busy poll for the
reply), echoes probes (ECHO / RESULT), asks for the cloud's profile (PROFILE /
DONE), fetches files (FETCH / CHUNK / DONE), pushes a bundle (PUSH / READY /
CHUNK / DONE / DONE), asks for STATUS and says BYE.  Every frame goes out through
``request``, which asks the state table (``wire/states.py``) whether this
connection may send it, and every answer comes in through ``answer``, which takes
only the frame the table says answers it and applies the request's transition.
A connection that breaks raises ``CloudLost`` (worth reconnecting); an ERROR frame
raises ``RemoteError`` unless its code says "this server, not this request".

Python 3.6 syntax: this module runs on the Jetson.
"""
import select
import socket
import time

from runtime.edge.console import say
from runtime.edge.spin import SpinPolicy
from runtime.errors import UserError
from runtime.wire import auth, codec, sockets, states
from runtime.wire.tls import PLAIN

BUSY_POLL_LEAD_S = 0.0005  # start spinning this long before the reply is expected ...

BUSY_POLL_MAX_S = 0.002    # ... and spin at most this long before sleeping in recv

# serve-cloud answers the greeting at once (docs/PROTOCOL.md): a peer silent this long is not serve-cloud, or not a
# working one, whatever --timeout allows each reply (minutes, for a plan's profiles)
GREETING_TIMEOUT_S = 3.0

WHAT_TO_DO = "give --cloud the HOST:PORT that serve-cloud listens on"  # where another service answers there


class CannotConnect(UserError):
    """No connection could be opened to the cloud (refused, unreachable, timed out): worth trying again later."""


class NotServeCloud(UserError):
    """What answers at --cloud is not serve-cloud (another service on that port): no use trying again."""


class CloudLost(UserError):
    """The connection to the cloud broke (closed, reset, timed out, or the server shut down): the
    requests in flight may be sent again on a new connection."""


def _first_line(sent):
    """The first line of what a peer sent, quoted, its bytes escaped where they are not text: "HTTP/1.1 400 Bad
    Request"."""
    line = sent.split(b"\n", 1)[0].rstrip(b"\r") or sent
    return '"{}{}"'.format(repr(line[:60])[2:-1], "..." if len(line) > 60 else "")  # the bytes' repr without b''


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

    def __init__(self, address, timeout=30.0, max_frame_bytes=codec.DEFAULT_MAX_FRAME_BYTES, busy_poll=False,
                 security=None):
        self.address = address
        self.timeout = timeout
        security = security or PLAIN
        greeting_s = min(timeout, GREETING_TIMEOUT_S)
        self.sock = self._open(security, greeting_s)
        self.tls = sockets.is_tls(self.sock)
        sockets.set_timeouts(self.sock, greeting_s)  # receive() sets --timeout once the greeting is read
        sockets.tune_socket(self.sock)
        self.reader = sockets.FrameReader(self.sock, max_frame_bytes, allowed_types=codec.FROM_CLOUD)
        self._waiting = greeting_s
        self.busy_poll = busy_poll and not self.tls  # TLS has no non-blocking peek to spin on
        self._expected_s = None  # smoothed round trip of infer()
        self.spin = SpinPolicy()
        self._next_id = 1
        self.broken = False  # a send failed
        self.state = states.Connection()  # what this connection may send (wire/states.py)
        try:
            challenge = self._greet(greeting_s)
            self.state.authenticated = not challenge.get("required")  # a cloud without a token needs no proof
            if security.token:
                self.authenticate(security.token, challenge.get("nonce"))
        except BaseException:
            self._close_socket()
            raise

    def _open(self, security, greeting_s):
        """The connection to ``self.address``: TCP within --timeout, then TLS where ``security`` asks for it, its
        handshake within ``greeting_s``."""
        host, port = sockets.parse_address(self.address)
        try:
            sock = socket.create_connection((host, port), timeout=self.timeout)
        except OSError as exc:
            if not sockets.names_port(self.address):
                raise CannotConnect("cannot connect to the cloud at {} ({}): {}; give the port serve-cloud listens "
                                    "on, as --cloud HOST:PORT".format(self.address, exc.strerror or exc,
                                                                      self._port_left_out(port)))
            raise CannotConnect("cannot connect to the cloud at {} ({}); is `cli.py serve-cloud` running "
                                "there?".format(self.address, exc.strerror or exc))
        sock.settimeout(greeting_s)
        return security.wrap(sock, host, self.address)

    def _port_left_out(self, port):
        return "--cloud {} names no port, so serve-cloud's default {} was tried".format(self.address, port)

    def _greet(self, seconds):
        """The greeting (docs/PROTOCOL.md): AUTH without a proof, which serve-cloud answers at once with CHALLENGE,
        token or none; its metadata.  A peer that does anything else within ``seconds`` is not serve-cloud:
        NotServeCloud says what it sent, CannotConnect that it closed or sent nothing (worth trying again)."""
        request_id, _ = self.request(codec.AUTH, {})
        try:
            self.reader.expect_frame()
        except sockets.NotAFrame as exc:
            raise self._not_serve_cloud(exc, seconds)
        return self.answer(codec.AUTH, {}, request_id).meta

    def _not_serve_cloud(self, exc, seconds):
        """The error for a peer that answered the greeting with ``exc`` (sockets.NotAFrame)."""
        if exc.sent[:1] in (b"\x15", b"\x16") and exc.sent[1:2] == b"\x03" and not self.tls:  # a TLS record
            return NotServeCloud("the service at {} answered in TLS; if it is serve-cloud with --tls-cert, connect "
                                 "with --tls-ca CA (or --tls)".format(self.address))
        if exc.sent:
            return NotServeCloud(self._wrong_service("it answered {}".format(_first_line(exc.sent))))
        if not exc.closed:
            return CannotConnect(self._wrong_service("it sent no greeting within {:g} s of connecting".format(
                seconds)))
        if self.tls:
            return self._lost(exc.cause)  # a TLS session the cloud ended: mutual TLS
        return CannotConnect("{} closed the connection without a greeting ({}): it is serve-cloud with --tls-cert "
                             "(then connect with --tls-ca CA or --tls), or not an edgesplit serve-cloud (then {})".format(
                                 self._service(), exc.cause, WHAT_TO_DO))

    def _wrong_service(self, what):
        """'the service at ... is not an edgesplit serve-cloud: ``what``; ' and what to do."""
        return "{} is not an edgesplit serve-cloud: {}; {}".format(self._service(), what, WHAT_TO_DO)

    def _service(self):
        """'the service at HOST:PORT', and where --cloud names no port, which was tried."""
        _, port = sockets.parse_address(self.address)
        return "the service at {}{}".format(self.address, "" if sockets.names_port(self.address) else
                                            " ({})".format(self._port_left_out(port)))

    def authenticate(self, token, nonce):
        """Prove the inference token (docs/PROTOCOL.md, AUTH) against the greeting's ``nonce``: the token itself
        never leaves."""
        if not isinstance(nonce, str) or len(nonce) < 16:
            raise codec.ProtocolError("bad_reply", "the cloud's CHALLENGE carries no usable nonce")
        try:
            return self.call(codec.AUTH, {"proof": auth.proof(token, nonce, auth.INFERENCE)}).meta
        except codec.RemoteError as exc:
            if exc.code == "bad_token":
                raise UserError("the cloud at {} refused the inference token; check --token / ${} on both "
                                "sides".format(self.address, auth.TOKEN_ENV[auth.INFERENCE]))
            raise

    def request(self, type_, meta, array=None):
        """Send one frame the state table allows this connection; return (its request id, bytes sent)."""
        states.check(self.state, type_, meta)
        request_id = self._next_id
        self._next_id += 1
        try:
            sent = sockets.send_frame(self.sock, type_, request_id, meta, array)
        except OSError as exc:  # reset, broken pipe, send timeout
            self.broken = True  # part of a frame may be on the connection: nothing more goes on it
            raise self._lost(exc)
        return request_id, sent

    def _lost(self, exc):
        """The error for a connection that broke with ``exc``: CloudLost (worth reconnecting), or a
        UserError where the cloud refused this client's TLS session before answering anything."""
        if self.tls and not self.reader.bytes_received and (type(exc).__module__ == "ssl" or
                                                            isinstance(exc, codec.PeerClosed)):
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
            except codec.PeerClosed as exc:
                if self.tls and not self.reader.bytes_received:
                    raise self._lost(exc)
                raise CloudLost("the cloud at {} closed the connection".format(self.address))
            except socket.timeout:
                raise CloudLost("no reply from the cloud at {} within {:.0f} s".format(self.address, self._waiting))
            except codec.ProtocolError as exc:
                if exc.code != "truncated":
                    raise
                raise CloudLost("the cloud at {} closed the connection in the middle of a reply".format(self.address))
            except OSError as exc:  # reset by the peer
                raise self._lost(exc)
            finally:
                if self._waiting != self.timeout:
                    sockets.set_timeouts(self.sock, self.timeout)
                    self._waiting = self.timeout
            if frame.type == codec.ERROR:
                code = frame.meta.get("code", "error")
                if code in RETRY_CODES:
                    raise CloudLost("cloud: {}".format(frame.meta.get("message", "")))
                raise codec.RemoteError(code, "cloud: {}".format(frame.meta.get("message", "")))
            if frame.type != codec.NOTICE:
                return frame
            say("cloud: {}".format(frame.meta.get("message", "")))
            self._waiting = max(self.timeout, float(frame.meta.get("wait_s", 0)))
            sockets.set_timeouts(self.sock, self._waiting)

    def answer(self, type_, meta, request_id, step=0):
        """The ``step``-th frame answering request ``request_id`` (a ``type_`` frame with ``meta``): the frame
        ``states.REPLIES`` names, or ProtocolError; the last answer applies the request's transition."""
        answers = states.replies(type_, meta)
        frame = self.receive()
        if frame.type != answers[step]:
            raise codec.ProtocolError("bad_reply", "expected {} in answer to {}, got {}".format(
                codec.TYPE_NAMES[answers[step]], codec.TYPE_NAMES[type_], frame.type_name))
        if frame.request_id != request_id:
            raise codec.ProtocolError("bad_reply", "reply to request {} while waiting for {}".format(
                frame.request_id, request_id))
        if step == len(answers) - 1:
            states.advance(self.state, type_, meta)
        return frame

    def call(self, type_, meta, array=None):
        """One request and its (one-frame) answer."""
        request_id, _ = self.request(type_, meta, array)
        return self.answer(type_, meta, request_id)

    def hello(self, meta):
        return self.call(codec.HELLO, dict(meta, protocol=codec.VERSION)).meta

    def status(self):
        """The server's counters and state (a STATUS request)."""
        return self.call(codec.STATUS, {}).meta.get("status", {})

    def profile(self, model, batch_size):
        """The cloud's segments manifest and its own profile of them (PROFILE): the DONE frame's metadata."""
        return self.call(codec.PROFILE, {"model": model, "batch_size": batch_size}).meta

    def push(self, manifest_data, directory, activate, proof):
        """Upload a bundle's files (PUSH, READY, CHUNKs, DONE); return (the cloud's DONE metadata, bytes sent).
        Files the cloud already holds (READY ``have``) are not sent again."""
        from runtime.wire.transfer import file_entries, send_files
        meta = {"manifest": manifest_data, "activate": bool(activate), "proof": proof}
        request_id, _ = self.request(codec.PUSH, meta)
        ready = self.answer(codec.PUSH, meta, request_id, step=0)
        sent = 0
        if not ready.meta.get("have"):
            sent = send_files(self.sock, directory, file_entries(manifest_data))
        return self.answer(codec.PUSH, meta, request_id, step=1).meta, sent

    def infer(self, array, meta=None, watch=None):
        """Send one activation, wait for its result; return (RESULT frame, bytes sent, bytes received).

        With ``watch`` (adaptive.AdaptivePlanner.watch()), a reply that is overdue is reported to it while
        the edge waits (``watch_reply``)."""
        before = self.reader.bytes_received
        t0 = time.perf_counter()
        meta = meta or {}
        request_id, sent = self.request(codec.INFER, meta, array)
        if self.busy_poll and self._expected_s is not None:
            self._await_reply(t0)
        if watch is not None:
            self.watch_reply(t0, sent, watch)
        frame = self.answer(codec.INFER, meta, request_id)
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
        from runtime.wire.transfer import receive_files
        self.request(codec.FETCH, {"bundle_id": bundle_id, "part": part, "formats": list(formats)})
        return receive_files(self.reader, directory, entries, what="fetch of {}".format(bundle_id))

    def close(self):
        if not self.broken:  # (after a failed send a BYE would be read as the rest of that frame, or block)
            try:
                sockets.send_frame(self.sock, codec.BYE, 0, {})
            except OSError:
                pass
        self._close_socket()

    def _close_socket(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a receiver thread blocked on this socket
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass
