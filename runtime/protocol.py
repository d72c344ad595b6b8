"""The wire protocol between edge and cloud (specified in docs/PROTOCOL.md).

Every message is one frame::

    header (28 bytes, little-endian)   magic b"ESPL" | version u8 | type u8 | flags u16 |
                                       request_id u64 | meta_len u32 | payload_len u64
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

import numpy as np

from .errors import UserError

MAGIC = b"ESPL"
VERSION = 1
HEADER = struct.Struct("<4sBBHQIQ")
HEADER_SIZE = HEADER.size  # 28

# message types
HELLO, WELCOME, INFER, RESULT, ERROR, BYE = 1, 2, 3, 4, 5, 6
PUSH, READY, CHUNK, DONE, FETCH, NOTICE = 7, 8, 9, 10, 11, 12
ECHO, PROFILE = 13, 14
TYPE_NAMES = {HELLO: "HELLO", WELCOME: "WELCOME", INFER: "INFER", RESULT: "RESULT", ERROR: "ERROR", BYE: "BYE",
              PUSH: "PUSH", READY: "READY", CHUNK: "CHUNK", DONE: "DONE", FETCH: "FETCH", NOTICE: "NOTICE",
              ECHO: "ECHO", PROFILE: "PROFILE"}
TENSOR_TYPES = (INFER, RESULT, CHUNK, ECHO)
# what each side may receive
FROM_EDGE = (HELLO, INFER, BYE, PUSH, CHUNK, DONE, FETCH, ECHO, PROFILE)
FROM_CLOUD = (WELCOME, RESULT, ERROR, READY, CHUNK, DONE, NOTICE)
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
    __slots__ = ("type", "request_id", "meta", "array")

    def __init__(self, type_, request_id, meta, array=None):
        self.type = type_
        self.request_id = request_id
        self.meta = meta
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


def send_frame(sock, type_, request_id, meta, array=None):
    """Send one frame; the tensor's bytes go from its own memory (scatter-gather, no copy)."""
    buffers = []
    if array is not None:
        array = np.ascontiguousarray(array)
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        name = array.dtype.name
        if name not in DTYPES:
            raise ProtocolError("bad_dtype", "dtype {} cannot be sent".format(name))
        meta = dict(meta, dtype=name, shape=list(array.shape))
        buffers.append(_byte_view(array))
    meta_bytes = encode_meta(meta)
    payload_len = sum(len(b) for b in buffers)
    header = HEADER.pack(MAGIC, VERSION, type_, 0, request_id, len(meta_bytes), payload_len)
    _sendmsg_all(sock, [header, meta_bytes] + buffers)
    return HEADER_SIZE + len(meta_bytes) + payload_len


def _byte_view(array):
    """The bytes of a C-contiguous array, without a copy."""
    return memoryview(array.reshape(-1).view(np.uint8))


def _sendmsg_all(sock, buffers):
    views = [memoryview(b) for b in buffers if len(b)]
    while views:
        sent = sock.sendmsg(views)
        while sent and views:
            if sent >= len(views[0]):
                sent -= len(views[0])
                views.pop(0)
            else:
                views[0] = views[0][sent:]
                sent = 0


def send_error(sock, request_id, code, message):
    """Best effort: the peer may already be gone."""
    try:
        send_frame(sock, ERROR, request_id, {"code": code, "message": message})
    except (OSError, ProtocolError):
        pass


# ---------------------------------------------------------------- receiving

def recv_into_exact(sock, view):
    """Fill ``view`` from the socket; raise ProtocolError('truncated') if the peer closes mid-way."""
    got = 0
    total = len(view)
    while got < total:
        n = sock.recv_into(view[got:], total - got)
        if n == 0:
            if got == 0:
                return 0
            raise ProtocolError("truncated", "connection closed after {} of {} bytes of a frame".format(got, total))
        got += n
    return got


class FrameReader(object):
    """Reads and validates frames from one socket.

    ``tensor_spec(frame_type, meta)`` is called for INFER/RESULT frames before the
    payload is allocated; it returns the expected (dtype name, shape) or raises
    ProtocolError.  The default accepts any whitelisted dtype and any shape that
    matches the payload length.
    """

    def __init__(self, sock, max_frame_bytes=DEFAULT_MAX_FRAME_BYTES, allowed_types=None):
        self.sock = sock
        self.max_frame_bytes = max_frame_bytes
        self.allowed_types = allowed_types
        self._header = bytearray(HEADER_SIZE)
        self.bytes_received = 0

    def read(self, tensor_check=None):
        view = memoryview(self._header)
        n = recv_into_exact(self.sock, view)
        if n == 0:
            raise PeerClosed()
        magic, version, type_, _flags, request_id, meta_len, payload_len = HEADER.unpack(self._header)
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
        meta_buf = bytearray(meta_len)
        if meta_len and recv_into_exact(self.sock, memoryview(meta_buf)) == 0:
            raise ProtocolError("truncated", "connection closed before the frame's metadata")
        try:
            meta = json.loads(meta_buf.decode("utf-8")) if meta_len else {}
        except (UnicodeDecodeError, ValueError):
            raise ProtocolError("bad_meta", "frame metadata is not UTF-8 JSON")
        if not isinstance(meta, dict):
            raise ProtocolError("bad_meta", "frame metadata must be a JSON object")
        array = None
        if type_ in TENSOR_TYPES:
            dtype, shape = _tensor_layout(meta, payload_len)
            if tensor_check is not None:
                tensor_check(type_, dtype, shape)
            array = np.empty(shape, dtype=DTYPES[dtype])
            if payload_len and recv_into_exact(self.sock, _byte_view(array)) == 0:
                raise ProtocolError("truncated", "connection closed before the frame's tensor")
        self.bytes_received += HEADER_SIZE + meta_len + payload_len
        return Frame(type_, request_id, meta, array)


def _tensor_layout(meta, payload_len):
    dtype = meta.get("dtype")
    shape = meta.get("shape")
    if dtype not in DTYPES:
        raise ProtocolError("bad_dtype", "tensor dtype {!r} is not one of {}".format(dtype, ", ".join(sorted(DTYPES))))
    if not isinstance(shape, list) or len(shape) > 8 or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ProtocolError("bad_shape", "tensor shape {!r} is not a list of at most 8 sizes".format(shape))
    numel = 1
    for d in shape:
        numel *= d
    if numel * DTYPES[dtype].itemsize != payload_len:
        raise ProtocolError("bad_shape", "tensor {} {} needs {} bytes, the frame carries {}".format(
            dtype, shape, numel * DTYPES[dtype].itemsize, payload_len))
    return dtype, tuple(shape)
