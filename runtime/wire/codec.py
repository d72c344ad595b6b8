"""Frames as bytes: the protocol's encoding, with no I/O (specified in docs/PROTOCOL.md).

Every message is one frame::

    header (36 bytes, little-endian)   magic b"ESPL" | version u8 | type u8 | flags u16 |
                                       request_id u64 | meta_len u32 | payload_len u64 |
                                       compute_us u32 | queue_us u32
    meta    (meta_len bytes)           UTF-8 JSON object
    payload (payload_len bytes)        raw little-endian tensor bytes (dtype, shape in meta)

A tensor frame carries one tensor (``dtype`` and ``shape`` in its metadata) or,
where several tensors cross a cut, a list of them (``tensors``: one object per
tensor with its ``dtype``, ``shape`` and any fields of its own, such as its
``encoding``); their bytes follow one another in the payload, each starting at a
multiple of ``ALIGN`` bytes (zero padding between).  ``encode`` takes a tuple of
arrays for that; a received frame's ``array`` is then a tuple of views into one
buffer.

Nothing is pickled.  ``encode`` turns a frame into the buffers to send (the tensor
as a view of its own memory, never a copy); ``decode_header`` and ``decode_meta``
check a received frame field by field before anything is allocated for it: magic,
version, type, then the lengths against the limits, then the JSON, then (for
tensors) dtype and shape.  ``sockets.py`` moves these bytes; ``states.py`` says which
frame may come when.

Python 3.6 syntax: this module runs on the Jetson.
"""
import json
import struct

import numpy as np

from runtime.errors import CodedError

MAGIC = b"ESPL"
VERSION = 3  # 2: the RESULT's timings moved from the metadata into the header; 3: several tensors in one frame
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
TENSOR_TYPES = (INFER, RESULT, CHUNK, ECHO)  # the frames that carry a payload
# what each side may receive
FROM_EDGE = (HELLO, INFER, BYE, PUSH, CHUNK, DONE, FETCH, ECHO, PROFILE, AUTH, STATUS)
FROM_CLOUD = (WELCOME, RESULT, ERROR, READY, CHUNK, DONE, NOTICE, CHALLENGE)
CHUNK_BYTES = 1 << 20  # files move in frames of at most 1 MiB

MAX_META_BYTES = 1024 * 1024  # manifests of models with many split points travel in metadata
DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024
# dtypes that may cross the wire, by their name in the metadata
DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2"), "int8": np.dtype("i1"),
          "uint8": np.dtype("u1"), "int64": np.dtype("<i8")}
MAX_DIM = 1 << 31  # no tensor dimension beyond this (numpy refuses some shapes of zero elements too)
MAX_TENSORS = 16  # the most tensors one frame may carry
ALIGN = 8  # each of several tensors starts at a multiple of this many bytes of the payload
_ZEROS = bytes(ALIGN)


class ProtocolError(CodedError):
    """A frame broke the protocol.  ``code`` is sent to the peer in an ERROR frame."""


class PeerClosed(ProtocolError):
    """The peer closed the connection between frames (not an error by itself)."""

    def __init__(self, message="connection closed by peer"):
        ProtocolError.__init__(self, "closed", message)


class RemoteError(CodedError):
    """The peer answered with an ERROR frame."""


class Frame(object):
    """One received frame.  ``meta`` may be shared with earlier frames of the same metadata: read it only.

    ``compute_ms`` and ``queue_ms`` (RESULT frames) are the server's tail compute and
    batching queue times, carried in the header so that a RESULT's metadata is the
    same from one request to the next (parsed once, see sockets.FrameReader).
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


# ---------------------------------------------------------------- encoding

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


def byte_view(array):
    """The bytes of a C-contiguous array, without a copy."""
    return memoryview(array.reshape(-1).view(np.uint8))


def encode(type_, request_id, meta, array=None, compute_ms=0.0, queue_ms=0.0):
    """The buffers of one frame, in order: header, metadata and (for a tensor) the tensor's own memory.

    This is the hot path of every request, kept short on purpose: the metadata of a
    tensor of a shape seen before is not re-encoded, and a C-contiguous little-endian
    array is neither copied nor converted.
    """
    if array is None:
        meta_bytes = encode_meta(meta)
        return [HEADER.pack(MAGIC, VERSION, type_, 0, request_id, len(meta_bytes), 0, 0, 0), meta_bytes]
    if isinstance(array, tuple):
        return _encode_several(type_, request_id, meta, array, compute_ms, queue_ms)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    try:
        view = memoryview(array).cast("B")
    except TypeError:  # not C-contiguous, or empty
        array = np.ascontiguousarray(array)
        view = byte_view(array)
    meta_bytes = _tensor_meta(meta, array)
    if len(meta_bytes) > MAX_META_BYTES:
        raise ProtocolError("meta_too_large", "metadata of {} bytes exceeds {}".format(len(meta_bytes), MAX_META_BYTES))
    return [HEADER.pack(MAGIC, VERSION, type_, 0, request_id, len(meta_bytes), len(view), _us(compute_ms),
                        _us(queue_ms)), meta_bytes, view]


def _encode_several(type_, request_id, meta, arrays, compute_ms, queue_ms):
    """A frame of several tensors: ``meta["tensors"]`` (if given) holds each one's own fields, to which their dtype
    and shape are added; the payload is their bytes, each padded to ``ALIGN``."""
    own = meta.get("tensors") or [{}] * len(arrays)
    if not 1 <= len(arrays) <= MAX_TENSORS or len(own) != len(arrays):
        raise ProtocolError("bad_frame", "a frame carries 1 to {} tensors with one metadata entry each, not {} "
                                         "tensors and {} entries".format(MAX_TENSORS, len(arrays), len(own)))
    entries, views = [], []
    for i, (extra, array) in enumerate(zip(own, arrays)):
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        array = np.ascontiguousarray(array)
        if array.dtype.name not in DTYPES:
            raise ProtocolError("bad_dtype", "dtype {} cannot be sent".format(array.dtype.str))
        entry = dict(extra)
        entry.update(dtype=array.dtype.name, shape=list(array.shape))
        entries.append(entry)
        if array.size:
            views.append(byte_view(array))
        if i < len(arrays) - 1 and array.nbytes % ALIGN:
            views.append(_ZEROS[:ALIGN - array.nbytes % ALIGN])
    body = dict(meta)
    body["tensors"] = entries
    meta_bytes = encode_meta(body)
    return [HEADER.pack(MAGIC, VERSION, type_, 0, request_id, len(meta_bytes), sum(len(v) for v in views),
                        _us(compute_ms), _us(queue_ms)), meta_bytes] + views


# ---------------------------------------------------------------- decoding

def decode_header(buf, offset=0, max_frame_bytes=DEFAULT_MAX_FRAME_BYTES, allowed_types=None):
    """The header at ``buf[offset:]``, checked: (type, request_id, meta_len, payload_len, compute_ms, queue_ms)."""
    magic, version, type_, _flags, request_id, meta_len, payload_len, compute_us, queue_us = HEADER.unpack_from(
        buf, offset)
    if magic != MAGIC:
        raise ProtocolError("bad_magic", "not an edgesplit frame (magic {!r}); is the peer speaking another "
                                         "protocol?".format(bytes(magic)))
    if version != VERSION:
        raise ProtocolError("bad_version", "protocol version {} (this side speaks {}); update edge and cloud "
                                           "to the same release".format(version, VERSION))
    if type_ not in TYPE_NAMES or (allowed_types is not None and type_ not in allowed_types):
        raise ProtocolError("bad_type", "unexpected message type {}".format(type_))
    if meta_len > MAX_META_BYTES:
        raise ProtocolError("too_large", "metadata of {} bytes exceeds {}".format(meta_len, MAX_META_BYTES))
    if payload_len > max_frame_bytes:
        raise ProtocolError("too_large", "payload of {} bytes exceeds the limit of {} (--max-frame-mb)".format(
            payload_len, max_frame_bytes))
    if payload_len and type_ not in TENSOR_TYPES:
        raise ProtocolError("bad_frame", "{} frames carry no payload".format(TYPE_NAMES[type_]))
    return type_, request_id, meta_len, payload_len, compute_us / 1000.0, queue_us / 1000.0


def decode_meta(type_, meta_bytes, payload_len):
    """A frame's metadata, checked: (meta dict, dtype name or None, shape tuple or None)."""
    try:
        meta = json.loads(meta_bytes.decode("utf-8"), parse_constant=_no_constant) if meta_bytes else {}
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError("bad_meta", "frame metadata is not UTF-8 JSON (without NaN or Infinity)")
    except RecursionError:
        raise ProtocolError("bad_meta", "frame metadata nests too deeply")
    if not isinstance(meta, dict):
        raise ProtocolError("bad_meta", "frame metadata must be a JSON object")
    if type_ not in TENSOR_TYPES:
        return meta, None, None
    if "tensors" in meta:  # several tensors: the payload is received as bytes, then split (split_tensors)
        if type_ not in (INFER, RESULT):
            raise ProtocolError("bad_meta", "only INFER and RESULT frames carry several tensors, not {}".format(
                TYPE_NAMES[type_]))
        _tensors_layout(meta["tensors"], payload_len)
        return meta, "uint8", (payload_len,)
    dtype, shape = _tensor_layout(meta, payload_len)
    return meta, dtype, shape


def _tensors_layout(entries, payload_len):
    """Check a frame's ``tensors`` list against its payload: [(dtype name, shape, offset)]."""
    if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_TENSORS or \
            not all(isinstance(e, dict) for e in entries):
        raise ProtocolError("bad_meta", "a frame's tensors must be a list of 1 to {} objects".format(MAX_TENSORS))
    for entry in entries:
        _tensor_layout(entry, None)
    layout = _offsets(entries)
    total = layout[-1][2] + layout[-1][3]
    if total != payload_len:
        raise ProtocolError("bad_shape", "the frame's {} tensors need {} bytes (each padded to {}), the frame carries "
                                         "{}".format(len(entries), total, ALIGN, payload_len))
    return layout


def _offsets(entries):
    """[(numpy dtype, shape, offset, bytes)] of checked ``tensors`` entries: each starts at a multiple of ALIGN."""
    layout, offset = [], 0
    for entry in entries:
        dtype, shape = DTYPES[entry["dtype"]], tuple(entry["shape"])
        nbytes = dtype.itemsize * _numel(shape)
        layout.append((dtype, shape, offset, nbytes))
        offset += nbytes + (-nbytes) % ALIGN
    return layout


def split_tensors(meta, payload):
    """The tensors of a frame of several (``meta["tensors"]``, checked by ``decode_meta``): views into
    ``payload``, its uint8 bytes, in order."""
    return tuple(payload[offset:offset + nbytes].view(dtype).reshape(shape)
                 for dtype, shape, offset, nbytes in _offsets(meta["tensors"]))


def _numel(shape):
    numel = 1
    for d in shape:
        numel *= d
    return numel


def _no_constant(name):
    raise ValueError("{} is not allowed".format(name))


def _tensor_layout(meta, payload_len):
    dtype = meta.get("dtype")
    shape = meta.get("shape")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ProtocolError("bad_dtype", "tensor dtype {!r} is not one of {}".format(dtype, ", ".join(sorted(DTYPES))))
    if not isinstance(shape, list) or len(shape) > 8 or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d < MAX_DIM for d in shape):
        raise ProtocolError("bad_shape", "tensor shape {!r} is not a list of at most 8 sizes below 2^31".format(
            shape))
    numel = _numel(shape)
    if payload_len is not None and numel * DTYPES[dtype].itemsize != payload_len:
        raise ProtocolError("bad_shape", "tensor {} {} needs {} bytes, the frame carries {}".format(
            dtype, shape, numel * DTYPES[dtype].itemsize, payload_len))
    return dtype, tuple(shape)
