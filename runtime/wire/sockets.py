"""The only code that touches a socket: frames sent and received, timeouts, busy polling.

``send_frame`` sends what ``codec.encode`` makes in one ``sendmsg`` (the tensor from
its own memory); ``FrameReader`` buffers receives, hands each header and metadata
to ``codec`` to be checked, and receives a tensor straight into the numpy array
that will hold it (``recv_into``).  Timeouts are the kernel's (``set_timeouts``).
``FrameReader.expect_frame`` tells a peer that speaks another protocol, or none,
from one that begins a frame (the client's greeting, docs/PROTOCOL.md).

Python 3.6 syntax: this module runs on the Jetson.
"""
import socket
import struct
import sys
import time

import numpy as np

from runtime.errors import UserError
from runtime.wire import codec
from runtime.wire.codec import DTYPES, ERROR, HEADER_SIZE, INFER, Frame, PeerClosed, ProtocolError


def _split_address(text):
    """'host:port', '[v6]:port' or 'host' -> (host, the port as written, or None where it names none)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, (rest.lstrip(":") if rest else None)
    if text.count(":") == 1:
        return tuple(text.split(":"))
    return text, None


def names_port(text):
    """Whether the address ``text`` names its port (else ``parse_address`` gives the default)."""
    return _split_address(text)[1] is not None


def parse_address(text, default_port=9999):
    """'host:port', '[v6]:port' or 'host' -> (host, port); raise UserError for anything else."""
    host, port = _split_address(text)
    if port is None:
        port = default_port
    try:
        port = int(port)
        if not 0 <= port <= 65535:
            raise ValueError
    except ValueError:
        raise UserError("bad address {!r}; expected HOST:PORT, e.g. 192.168.1.10:9999".format(text))
    if not host:
        raise UserError("bad address {!r}: no host; expected HOST:PORT".format(text))
    return host, port


def tune_socket(sock):
    """Small frames must leave at once: no Nagle delay."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def send_frame(sock, type_, request_id, meta, array=None, compute_ms=0.0, queue_ms=0.0):
    """Send one frame (``codec.encode``) in one ``sendmsg``; return its size in bytes."""
    buffers = codec.encode(type_, request_id, meta, array, compute_ms, queue_ms)
    _sendmsg_all(sock, buffers)
    return sum(len(b) for b in buffers)


def _sendmsg_all(sock, buffers):
    """All of ``buffers``: one ``sendmsg`` as a rule, more only when the socket buffer fills."""
    if is_tls(sock):  # TLS has no scatter-gather: the small pieces joined, the tensor from its own memory
        if len(buffers) > 2 and len(buffers[-1]) > 4096:
            sock.sendall(b"".join(buffers[:-1]))
            sock.sendall(buffers[-1])
        else:
            sock.sendall(b"".join(buffers))
        return
    try:
        sent = sock.sendmsg(buffers)
        if sent == sum(len(b) for b in buffers):
            return
        views = [memoryview(b) for b in buffers if len(b)]
        while views:
            while sent and views:
                if sent >= len(views[0]):
                    sent -= len(views[0])
                    views.pop(0)
                else:
                    views[0] = views[0][sent:]
                    sent = 0
            if views:
                sent = sock.sendmsg(views)
    except BlockingIOError:  # SO_SNDTIMEO fired: the peer has not read for that long
        raise socket.timeout("send timed out: the peer is not reading")


def send_error(sock, request_id, code, message):
    """Best effort: the peer may already be gone."""
    try:
        send_frame(sock, ERROR, request_id, {"code": code, "message": message})
    except (OSError, ProtocolError):
        pass


class NoFrameYet(Exception):
    """No byte of a next frame arrived within the socket's receive timeout (the peer is idle)."""


class NotAFrame(Exception):
    """What the peer did instead of beginning a frame (``FrameReader.expect_frame``): ``sent`` the bytes it sent
    (empty: none) and ``closed`` whether it then closed or reset the connection (``cause``: the exception that
    said so); neither: it said nothing within the socket's timeout."""

    def __init__(self, sent, closed, cause=None):
        Exception.__init__(self, "not a frame: {!r}".format(sent[:len(codec.MAGIC)]))
        self.sent, self.closed, self.cause = sent, closed, cause


def set_timeouts(sock, seconds, send_seconds=None):
    """Receive and send timeouts kept by the kernel (SO_RCVTIMEO / SO_SNDTIMEO) on a blocking socket.

    Python's own ``settimeout`` polls before every send and receive: one more system
    call each, which costs tens of microseconds per frame when the process has been
    idle.  Kernel timeouts cost nothing until they fire; a blocking call that times
    out raises BlockingIOError (EAGAIN), which the reader and ``send_frame`` turn into
    ``socket.timeout``.
    """
    if is_tls(sock):  # the TLS layer needs Python's own timeouts (a kernel one would look like a TLS error)
        sock.settimeout(seconds)
        return
    sock.settimeout(None)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(seconds))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(seconds if send_seconds is None else send_seconds))


def is_tls(sock):
    """Whether ``sock`` is a TLS socket (``ssl`` is imported only where TLS is used)."""
    ssl = sys.modules.get("ssl")
    return ssl is not None and isinstance(sock, ssl.SSLSocket)


def _timeval(seconds):
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1e6))


READ_BUFFER_BYTES = 64 * 1024


class FrameReader(object):
    """Reads and validates frames from one socket.

    ``tensor_check(frame_type, dtype, shape, meta)`` is called for tensor frames before the
    payload is allocated; it raises ProtocolError to refuse.

    Reads are buffered: one ``recv`` usually brings a small frame's header, metadata
    and payload together (one system call instead of three); a large payload is
    received straight into its numpy array after the buffered part is copied in.

    Timeouts: a receive timeout (``set_timeouts``, or Python's ``settimeout``) before
    the first byte of a frame raises NoFrameYet with ``idle_ok``, else socket.timeout.
    Once a frame has begun, with ``frame_timeout`` the reader keeps waiting through
    timeouts until the whole frame has taken that long (a peer that dribbles a frame
    is cut off then); without it, the first timeout raises socket.timeout.
    """

    def __init__(self, sock, max_frame_bytes=codec.DEFAULT_MAX_FRAME_BYTES, allowed_types=None, frame_timeout=None,
                 reuse_arrays=False):
        self.sock = sock
        # with ``reuse_arrays`` a tensor frame of the same dtype and shape as the last one is received into the
        # same array (no allocation, no page faults): for a caller done with each frame before the next read
        self.reuse_arrays = reuse_arrays
        self._last_array = None
        self.max_frame_bytes = max_frame_bytes
        self.allowed_types = allowed_types
        self.frame_timeout = frame_timeout
        self._buf = bytearray(READ_BUFFER_BYTES)
        self._view = memoryview(self._buf)
        self._lo = self._hi = 0
        self._deadline = None
        self.bytes_received = 0
        # the metadata of an edge's INFER frames repeats byte for byte: parsed and checked once
        self._checked = {}

    def buffered(self):
        """Bytes already received and not yet returned in a frame."""
        return self._hi - self._lo

    def _recv(self, view, starting):
        """One receive into ``view``: the byte count (0: the peer closed)."""
        while True:
            try:
                return self.sock.recv_into(view)
            except (BlockingIOError, socket.timeout):
                if starting:
                    raise NoFrameYet()
                if self._deadline is None:
                    raise socket.timeout("timed out in the middle of a frame")
                if time.monotonic() > self._deadline:
                    raise socket.timeout("frame not complete within {:.0f} s".format(self.frame_timeout))

    def poll(self, seconds):
        """Busy-wait up to ``seconds`` for bytes to arrive (non-blocking receives into the buffer).

        True once some are buffered (or the peer closed: the next read says so), False
        if none came in time.  For a caller that expects a reply within moments: a
        thread that spins is already running when the bytes land, one that sleeps in
        ``recv`` must first be woken and then runs cold (see docs/PROTOCOL.md).
        """
        if self._hi > self._lo:
            return True
        if is_tls(self.sock):  # no non-blocking peek through TLS: the caller's blocking read waits instead
            return False
        self._lo = self._hi = 0
        end = time.perf_counter() + seconds
        while True:
            try:
                self._hi = self.sock.recv_into(self._view, 0, socket.MSG_DONTWAIT)
                return True
            except BlockingIOError:
                if time.perf_counter() > end:
                    return False

    def expect_frame(self):
        """Wait for the first bytes of a frame, each receive within the socket's timeout; raise NotAFrame where the
        peer sends other bytes, closes, or says nothing in that time instead (a service that speaks another
        protocol, or none).  The bytes stay buffered for ``read``."""
        magic = len(codec.MAGIC)
        while self._hi - self._lo < magic:
            try:
                n = self._recv(self._view[self._hi:], True)
            except NoFrameYet:
                raise NotAFrame(self._unread(), False)
            except OSError as exc:  # reset by the peer; a TLS session it ended
                raise NotAFrame(self._unread(), True, exc)
            if n == 0:
                raise NotAFrame(self._unread(), True, PeerClosed())
            self._hi += n
        if self._unread()[:magic] != codec.MAGIC:
            raise NotAFrame(self._unread(), False)

    def _unread(self):
        return bytes(self._view[self._lo:self._hi])

    def _fill(self, need, starting=False, idle_ok=False):
        """Buffer at least ``need`` bytes; False if the peer closed before the first byte of a frame."""
        if self._hi - self._lo >= need:
            return True
        if len(self._buf) - self._lo < need:  # compact
            size = self._hi - self._lo
            self._buf[:size] = self._buf[self._lo:self._hi]
            self._lo, self._hi = 0, size
        while self._hi - self._lo < need:
            first = starting and self._hi == self._lo
            try:
                n = self._recv(self._view[self._hi:], first)
            except NoFrameYet:
                if idle_ok:
                    raise
                raise socket.timeout("timed out waiting for a frame")
            if n == 0:
                if first:
                    return False
                raise ProtocolError("truncated", "connection closed after {} bytes of a frame".format(
                    self._hi - self._lo))
            if first and self.frame_timeout is not None:
                self._deadline = time.monotonic() + self.frame_timeout
            self._hi += n
        return True

    def _take_into(self, view):
        """Fill ``view`` with the frame's next bytes: buffered ones first, the rest straight from the socket."""
        k = min(len(view), self._hi - self._lo)
        if k:
            view[:k] = self._view[self._lo:self._lo + k]
            self._lo += k
        got = k
        while got < len(view):
            n = self._recv(view[got:], False)
            if n == 0:
                raise ProtocolError("truncated", "connection closed after {} of {} bytes of a frame's payload".format(
                    got, len(view)))
            got += n

    def read(self, tensor_check=None, idle_ok=False):
        self._deadline = None
        if self.buffered() and self.frame_timeout is not None:  # the frame began in an earlier receive
            self._deadline = time.monotonic() + self.frame_timeout
        if not self._fill(HEADER_SIZE, True, idle_ok):
            raise PeerClosed()
        type_, request_id, meta_len, payload_len, compute_ms, queue_ms = codec.decode_header(
            self._buf, self._lo, self.max_frame_bytes, self.allowed_types)
        self._lo += HEADER_SIZE
        if meta_len <= len(self._buf):
            self._fill(meta_len)
            meta_bytes = bytes(self._view[self._lo:self._lo + meta_len])
            self._lo += meta_len
        else:
            meta_buf = bytearray(meta_len)
            self._take_into(memoryview(meta_buf))
            meta_bytes = bytes(meta_buf)
        key = (type_, meta_bytes, payload_len)
        known = self._checked.get(key)
        if known is not None:  # the same metadata as an earlier frame, which passed every check below
            meta, dtype, shape = known
        else:
            meta, dtype, shape = codec.decode_meta(type_, meta_bytes, payload_len)
            if dtype is not None:
                if tensor_check is not None:
                    tensor_check(type_, dtype, shape, meta)
                if len(self._checked) < 64 and meta_len <= 512:
                    self._checked[key] = (meta, dtype, shape)
            else:  # a HELLO may bind the connection to another bundle: check everything again
                self._checked.clear()
        array = None
        if dtype is not None:
            last = self._last_array
            if last is not None and last.shape == shape and last.dtype == DTYPES[dtype]:
                array = last
            else:
                array = np.empty(shape, dtype=DTYPES[dtype])
                if self.reuse_arrays and type_ == INFER:
                    self._last_array = array
            if payload_len:
                self._take_into(codec.byte_view(array))
            if "tensors" in meta:
                array = codec.split_tensors(meta, array)
        self.bytes_received += HEADER_SIZE + meta_len + payload_len
        return Frame(type_, request_id, meta, array, compute_ms, queue_ms)
