"""The wire protocol between edge and cloud (specified in docs/PROTOCOL.md).

Every message is one frame::

    header (36 bytes, little-endian)   magic b"ESPL" | version u8 | type u8 | flags u16 |
                                       request_id u64 | meta_len u32 | payload_len u64 |
                                       compute_us u32 | queue_us u32
    meta    (meta_len bytes)           UTF-8 JSON object
    payload (payload_len bytes)        raw little-endian tensor bytes (dtype, shape in meta)

Nothing is pickled.  A frame is validated field by field before anything is
allocated for it: magic, version, type, then the lengths against the limits, then
the JSON, then (for tensors) dtype and shape against what the receiver expects.
Tensor bytes are received straight into the numpy array that will hold them
(``recv_into``) and sent from the array's own memory (``sendmsg``).

Python 3.6 syntax: this module runs on the Jetson.
"""
import json
import socket
import struct
import sys
import time

import numpy as np

from .errors import UserError

MAGIC = b"ESPL"
VERSION = 2  # 2: the RESULT's timings moved from the metadata into the header
HEADER = struct.Struct("<4sBBHQIQII")
HEADER_SIZE = HEADER.size  # 36
MAX_US = (1 << 32) - 1

# message types
HELLO, WELCOME, INFER, RESULT, ERROR, BYE = 1, 2, 3, 4, 5, 6
PUSH, READY, CHUNK, DONE, FETCH, NOTICE = 7, 8, 9, 10, 11, 12
ECHO, PROFILE = 13, 14
AUTH, CHALLENGE, STATUS = 15, 16, 17
TYPE_NAMES = {HELLO: "HELLO", WELCOME: "WELCOME", INFER: "INFER", RESULT: "RESULT", ERROR: "ERROR", BYE: "BYE",
              PUSH: "PUSH", READY: "READY", CHUNK: "CHUNK", DONE: "DONE", FETCH: "FETCH", NOTICE: "NOTICE",
              ECHO: "ECHO", PROFILE: "PROFILE", AUTH: "AUTH", CHALLENGE: "CHALLENGE", STATUS: "STATUS"}
TENSOR_TYPES = (INFER, RESULT, CHUNK, ECHO)
# what each side may receive
FROM_EDGE = (HELLO, INFER, BYE, PUSH, CHUNK, DONE, FETCH, ECHO, PROFILE, AUTH, STATUS)
FROM_CLOUD = (WELCOME, RESULT, ERROR, READY, CHUNK, DONE, NOTICE, CHALLENGE)
CHUNK_BYTES = 1 << 20  # files move in frames of at most 1 MiB

MAX_META_BYTES = 1024 * 1024  # manifests of models with many split points travel in metadata
DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024
# dtypes that may cross the wire, by their name in the metadata
DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2"), "int8": np.dtype("i1"),
          "uint8": np.dtype("u1"), "int64": np.dtype("<i8")}


class ProtocolError(UserError):
    """A frame broke the protocol.  ``code`` is sent to the peer in an ERROR frame."""

    def __init__(self, code, message):
        UserError.__init__(self, message)
        self.code = code


class PeerClosed(ProtocolError):
    """The peer closed the connection between frames (not an error by itself)."""

    def __init__(self, message="connection closed by peer"):
        ProtocolError.__init__(self, "closed", message)


class RemoteError(UserError):
    """The peer answered with an ERROR frame."""

    def __init__(self, code, message):
        UserError.__init__(self, message)
        self.code = code


class Frame(object):
    """One received frame.  ``meta`` may be shared with earlier frames of the same metadata: read it only.

    ``compute_ms`` and ``queue_ms`` (RESULT frames) are the server's tail compute and
    batching queue times, carried in the header so that a RESULT's metadata is the
    same from one request to the next (parsed once, see FrameReader).
    """

    __slots__ = ("type", "request_id", "meta", "array", "compute_ms", "queue_ms")

    def __init__(self, type_, request_id, meta, array=None, compute_ms=0.0, queue_ms=0.0):
        self.type = type_
        self.request_id = request_id
        self.meta = meta
        self.compute_ms = compute_ms
        self.queue_ms = queue_ms
        self.array = array

    @property
    def type_name(self):
        return TYPE_NAMES.get(self.type, str(self.type))


def parse_address(text, default_port=9999):
    """'host:port', '[v6]:port' or 'host' -> (host, port); raise UserError for anything else."""
    host, port = text, default_port
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            port = rest.lstrip(":")
    elif text.count(":") == 1:
        host, port = text.split(":")
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


# ---------------------------------------------------------------- sending

def encode_meta(meta):
    data = json.dumps(meta, separators=(",", ":")).encode("utf-8")
    if len(data) > MAX_META_BYTES:
        raise ProtocolError("meta_too_large", "metadata of {} bytes exceeds {}".format(len(data), MAX_META_BYTES))
    return data


_TENSOR_META = {}  # (dtype, shape) -> b'"dtype":...,"shape":[...]}': the constant tail of a tensor frame's meta


def _tensor_meta(meta, array):
    """Meta bytes of a tensor frame: the caller's fields, then dtype and shape (their encoding cached)."""
    key = (array.dtype, array.shape)
    tail = _TENSOR_META.get(key)
    if tail is None:
        name = array.dtype.name
        if name not in DTYPES or array.dtype.byteorder == ">":
            raise ProtocolError("bad_dtype", "dtype {} cannot be sent".format(array.dtype.str))
        tail = json.dumps({"dtype": name, "shape": list(array.shape)}, separators=(",", ":")).encode("utf-8")[1:]
        if len(_TENSOR_META) < 256:
            _TENSOR_META[key] = tail
    if not meta:
        return b"{" + tail
    head = encode_meta(meta)
    return head[:-1] + b"," + tail


def _us(ms):
    return min(max(int(ms * 1000.0 + 0.5), 0), MAX_US)


def send_frame(sock, type_, request_id, meta, array=None, compute_ms=0.0, queue_ms=0.0):
    """Send one frame; the tensor's bytes go from its own memory (scatter-gather, no copy).

    This is the hot path of every request, kept short on purpose: the metadata of a
    tensor of a shape seen before is not re-encoded, a C-contiguous little-endian
    array is neither copied nor converted, and header, metadata and tensor leave in
    one ``sendmsg``.
    """
    if array is None:
        meta_bytes = encode_meta(meta)
        buffers = [HEADER.pack(MAGIC, VERSION, type_, 0, request_id, len(meta_bytes), 0, 0, 0), meta_bytes]
        _sendmsg_all(sock, buffers)
        return HEADER_SIZE + len(meta_bytes)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    try:
        view = memoryview(array).cast("B")
    except TypeError:  # not C-contiguous, or empty
        array = np.ascontiguousarray(array)
        view = _byte_view(array)
    meta_bytes = _tensor_meta(meta, array)
    if len(meta_bytes) > MAX_META_BYTES:
        raise ProtocolError("meta_too_large", "metadata of {} bytes exceeds {}".format(len(meta_bytes), MAX_META_BYTES))
    size = HEADER_SIZE + len(meta_bytes) + len(view)
    buffers = [HEADER.pack(MAGIC, VERSION, type_, 0, request_id, len(meta_bytes), len(view), _us(compute_ms),
                           _us(queue_ms)), meta_bytes, view]
    _sendmsg_all(sock, buffers)
    return size


def _byte_view(array):
    """The bytes of a C-contiguous array, without a copy."""
    return memoryview(array.reshape(-1).view(np.uint8))


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


# ---------------------------------------------------------------- receiving

class NoFrameYet(Exception):
    """No byte of a next frame arrived within the socket's receive timeout (the peer is idle)."""


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

    def __init__(self, sock, max_frame_bytes=DEFAULT_MAX_FRAME_BYTES, allowed_types=None, frame_timeout=None,
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
        magic, version, type_, _flags, request_id, meta_len, payload_len, compute_us, queue_us = HEADER.unpack_from(
            self._buf, self._lo)
        self._lo += HEADER_SIZE
        if magic != MAGIC:
            raise ProtocolError("bad_magic", "not an edgesplit frame (magic {!r}); is the peer speaking another "
                                             "protocol?".format(bytes(magic)))
        if version != VERSION:
            raise ProtocolError("bad_version", "protocol version {} (this side speaks {}); update edge and cloud "
                                               "to the same release".format(version, VERSION))
        if type_ not in TYPE_NAMES or (self.allowed_types is not None and type_ not in self.allowed_types):
            raise ProtocolError("bad_type", "unexpected message type {}".format(type_))
        if meta_len > MAX_META_BYTES:
            raise ProtocolError("too_large", "metadata of {} bytes exceeds {}".format(meta_len, MAX_META_BYTES))
        if payload_len > self.max_frame_bytes:
            raise ProtocolError("too_large", "payload of {} bytes exceeds the limit of {} (--max-frame-mb)".format(
                payload_len, self.max_frame_bytes))
        if payload_len and type_ not in TENSOR_TYPES:
            raise ProtocolError("bad_frame", "{} frames carry no payload".format(TYPE_NAMES[type_]))
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
            try:
                meta = json.loads(meta_bytes.decode("utf-8"), parse_constant=_no_constant) if meta_len else {}
            except (UnicodeDecodeError, ValueError):
                raise ProtocolError("bad_meta", "frame metadata is not UTF-8 JSON (without NaN or Infinity)")
            except RecursionError:
                raise ProtocolError("bad_meta", "frame metadata nests too deeply")
            if not isinstance(meta, dict):
                raise ProtocolError("bad_meta", "frame metadata must be a JSON object")
            dtype = shape = None
            if type_ in TENSOR_TYPES:
                dtype, shape = _tensor_layout(meta, payload_len)
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
                self._take_into(_byte_view(array))
        self.bytes_received += HEADER_SIZE + meta_len + payload_len
        return Frame(type_, request_id, meta, array, compute_us / 1000.0, queue_us / 1000.0)


def _no_constant(name):
    raise ValueError("{} is not allowed".format(name))


MAX_DIM = 1 << 31  # no tensor dimension beyond this (numpy refuses some shapes of zero elements too)


def _tensor_layout(meta, payload_len):
    dtype = meta.get("dtype")
    shape = meta.get("shape")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ProtocolError("bad_dtype", "tensor dtype {!r} is not one of {}".format(dtype, ", ".join(sorted(DTYPES))))
    if not isinstance(shape, list) or len(shape) > 8 or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d < MAX_DIM for d in shape):
        raise ProtocolError("bad_shape", "tensor shape {!r} is not a list of at most 8 sizes below 2^31".format(
            shape))
    numel = 1
    for d in shape:
        numel *= d
    if numel * DTYPES[dtype].itemsize != payload_len:
        raise ProtocolError("bad_shape", "tensor {} {} needs {} bytes, the frame carries {}".format(
            dtype, shape, numel * DTYPES[dtype].itemsize, payload_len))
    return dtype, tuple(shape)
