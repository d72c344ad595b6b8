"""Activation compression for the boundary tensor: a lossy scheme, then a lossless codec.

The edge encodes the float32 boundary tensor (N, C, ...) before it goes into an
INFER frame; the cloud decodes it back to float32 before the tail runs::

    meta, payload = Encoder("int8", "zstd").encode(x)      # payload: the frame's tensor
    frame meta["encoding"] = meta                          # None: send x as it is
    x2 = decode(meta, payload, boundary_shape)             # float32, (N,) + boundary_shape[1:]

Schemes (lossy, or not):

* ``none``: float32 as it is.
* ``fp16``: IEEE half, round to nearest even; values beyond +-65504 (inf included)
  saturate to +-65504, NaN stays NaN.  Max error |x| * 2^-11 in the normal range.
* ``int8``: asymmetric affine, ``q = round((x - lo) / scale)`` stored as uint8 with
  ``scale = (hi - lo) / 255`` from this tensor's own min ``lo`` and max ``hi``: one
  (lo, scale) per channel (axis 1), or one for the whole tensor when it is 1-D or 2-D
  or has fewer than 512 values per channel and sample (so the parameters never
  outweigh the data).  The receiver computes ``lo + q * scale``: max error scale / 2.
  A constant channel gets scale 1 and comes back exactly.

Codecs (lossless, over the scheme's bytes): ``none``, ``zstd`` (zstandard, level 1:
faster than level 3 for about the same size on activations), ``lz4`` (lz4.frame).
With a codec the frame's tensor is a 1-D uint8 array of the compressed bytes.
``zstandard`` and ``lz4`` are imported only when that codec is used.

Metadata (the JSON object under the frame's ``encoding`` key)::

    {"scheme": "int8", "codec": "zstd", "shape": [N, C, H, W],
     "lo": "<base64 of little-endian float32 x k>", "scale": "<same>"}

``shape`` is the tensor's full shape; ``lo`` and ``scale`` only for int8, with k = 1
(per tensor) or k = C (per channel).  The payload's dtype follows from the scheme:
float32, float16 (``<f2``) or uint8; with a codec it is uint8 and its bytes
decompress to exactly prod(shape) values of that dtype.

``decode`` validates everything against the shape the receiver expects (from its
manifest) before it allocates or decompresses anything, and raises
``ProtocolError("bad_encoding", ...)`` for any bad input.  A compressed payload may
not expand beyond the exact size its shape implies (no decompression bombs), and no
decoded tensor may exceed ``max_bytes`` (default: the protocol's 64 MiB frame limit;
the server passes its ``--max-frame-mb``), nor ever ``MAX_DECODED_BYTES``.

An ``Encoder`` keeps scratch buffers and a compression context per thread: create
one per edge run (or per connection) and reuse it.  ``decode`` is a plain function.

Python 3.6 syntax, numpy >= 1.19 only: this module runs on the Jetson.
"""
import base64
import binascii
import json
import threading

import numpy as np

from runtime.errors import UserError
from runtime.wire.codec import DEFAULT_MAX_FRAME_BYTES, DTYPES, ProtocolError

SCHEMES = ("none", "fp16", "int8")
CODECS = ("none", "zstd", "lz4")

ZSTD_LEVEL = 1  # level 3: 1.4-2.3x slower to compress, <= 1% fewer bytes on ResNet activations
MAX_DECODED_BYTES = 1 << 30  # no encoded frame may claim a decoded tensor larger than this
PER_CHANNEL_MIN_VALUES = 512  # int8: per-channel parameters from this many values per channel and sample
# (two float32 a channel, base64 in the metadata: under 3% of the int8 payload from 512 values on)
CHUNK = 1 << 16  # values per step of the encoders' loops (scratch stays in cache)

PIP_NAMES = {"zstd": "zstandard", "lz4": "lz4"}
_RAW_DTYPES = {"fp16": np.dtype("<f2"), "int8": np.dtype("u1")}
_F32 = np.dtype("<f4")
_FP16_MAX = 65504.0
_TINY = float(np.finfo(np.float32).tiny)
# float32 * 2^-112 moves the exponent bias from 127 to 15: the top bits are then a half
_DOWN = np.float32(2.0 ** -112)
_UP = np.float32(2.0 ** 112)
_U16 = np.uint32(16)
_U13 = np.uint32(13)
_U1 = np.uint32(1)
_SIGN16 = np.uint32(0x8000)
_ABS32 = np.uint32(0x7fffffff)
_ROUND = np.uint32(0xfff)
_I3 = np.int32(3)
_KEEP_SIGN = np.int32(-0x70000001)  # 0x8fffffff: clears the sign bits that an arithmetic shift copied
_HALF = np.float32(0.5)
_INT8_MAX_SPAN = 3.0e38  # |lo| + 255 * scale stays below float32's max (3.4e38)

_local = threading.local()


def _import_codec(codec):
    """The codec's module, or None when its package is not installed."""
    try:
        if codec == "zstd":
            import zstandard
            return zstandard
        import lz4.frame
        return lz4.frame
    except ImportError:
        return None


def _missing(codec):
    return "compression codec {!r} needs the Python package {}: pip install {}".format(
        codec, PIP_NAMES[codec], PIP_NAMES[codec])


def available_codecs():
    """The codecs this side can use (their packages are installed)."""
    return tuple(c for c in CODECS if c == "none" or _import_codec(c) is not None)


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def _per_channel(shape):
    """int8 uses one (lo, scale) per channel when each channel holds enough values."""
    return len(shape) >= 3 and _numel(shape[2:]) >= PER_CHANNEL_MIN_VALUES


def _b64(array):
    return base64.b64encode(np.ascontiguousarray(array, dtype=_F32).tobytes()).decode("ascii")


def _b64_len(count):
    return 4 * ((4 * count + 2) // 3)


# ---------------------------------------------------------------- encoding

class Encoder(object):
    """Encodes float32 tensors with one scheme and codec (see the module's docstring)."""

    def __init__(self, scheme="none", codec="none"):
        if scheme not in SCHEMES:
            raise UserError("unknown compression scheme {!r}; choose one of {}".format(scheme, ", ".join(SCHEMES)))
        if codec not in CODECS:
            raise UserError("unknown compression codec {!r}; choose one of {}".format(codec, ", ".join(CODECS)))
        self.scheme = scheme
        self.codec = codec
        self._module = None
        if codec != "none":
            self._module = _import_codec(codec)
            if self._module is None:
                raise UserError(_missing(codec))
        self._local = threading.local()

    def __repr__(self):
        return "Encoder(scheme={!r}, codec={!r})".format(self.scheme, self.codec)

    def encode(self, array):
        """-> (meta, payload): meta for the frame's "encoding" key (None: send payload as it is).

        With scheme and codec both "none" the payload is ``array`` itself (no copy).
        """
        if self.scheme == "none" and self.codec == "none":
            return None, array
        x = np.ascontiguousarray(array)
        if x.ndim < 1:
            raise UserError("cannot encode a 0-d tensor; expected (N, ...) with the batch first")
        if self.scheme != "none" and x.dtype != _F32:
            raise UserError("compression scheme {} encodes float32 tensors, not {}".format(self.scheme, x.dtype))
        if x.dtype.name not in DTYPES or x.dtype.byteorder == ">":
            raise UserError("cannot encode a tensor of dtype {}".format(x.dtype))
        meta = {"scheme": self.scheme, "codec": self.codec, "shape": [int(d) for d in x.shape]}
        if self.scheme == "fp16":
            raw = self._fp16(x)
        elif self.scheme == "int8":
            raw, lo, scale = self._int8(x)
            meta["lo"] = _b64(lo)
            meta["scale"] = _b64(scale)
        else:
            raw = x
        if self.codec == "none":
            return meta, raw
        data = memoryview(raw.reshape(-1).view(np.uint8))
        if self.codec == "zstd":
            packed = self._zstd().compress(data)
        else:
            packed = self._module.compress(data, compression_level=0, store_size=True)
        return meta, np.frombuffer(packed, dtype=np.uint8)

    def _zstd(self):
        cctx = getattr(self._local, "cctx", None)
        if cctx is None:
            cctx = self._local.cctx = self._module.ZstdCompressor(level=ZSTD_LEVEL)
        return cctx

    def _scratch(self, n):
        """Three reusable work arrays of n float32/uint32 values (this thread's)."""
        bufs = getattr(self._local, "scratch", None)
        if bufs is None or bufs[0].size < n:
            bufs = self._local.scratch = (np.empty(n, _F32), np.empty(n, np.uint32), np.empty(n, np.uint32))
        return bufs

    def _fp16(self, x):
        flat = x.reshape(-1)
        out = np.empty(x.shape, dtype=np.uint16)
        n = flat.size
        if n == 0:
            return out.view(_RAW_DTYPES["fp16"])
        lo, hi = float(flat.min()), float(flat.max())
        clip = not (-_FP16_MAX <= lo and hi <= _FP16_MAX)  # also true for NaN and inf
        if n < 4096 or not (np.isfinite(lo) and np.isfinite(hi)):
            # small, or NaN/inf among the values: numpy's own conversion (keeps NaN)
            return (np.clip(x, -_FP16_MAX, _FP16_MAX) if clip else x).astype(_RAW_DTYPES["fp16"])
        flat_out = out.reshape(-1)
        sa, sb, sc = self._scratch(min(n, CHUNK))
        for i in range(0, n, CHUNK):
            xs = flat[i:i + CHUNK]
            m = xs.size
            a, b, c = sa[:m], sb[:m], sc[:m]
            if clip:
                np.clip(xs, -_FP16_MAX, _FP16_MAX, out=a)
                np.multiply(a, _DOWN, out=a)
            else:
                np.multiply(xs, _DOWN, out=a)
            u = a.view(np.uint32)
            np.right_shift(u, _U16, out=b)  # the sign, at bit 15
            np.bitwise_and(b, _SIGN16, out=b)
            np.bitwise_and(u, _ABS32, out=u)
            np.right_shift(u, _U13, out=c)  # round to nearest even at bit 13
            np.bitwise_and(c, _U1, out=c)
            np.add(c, _ROUND, out=c)
            np.add(u, c, out=u)
            np.right_shift(u, _U13, out=u)
            np.bitwise_or(u, b, out=u)
            flat_out[i:i + m] = u
        return out.view(_RAW_DTYPES["fp16"])

    def _int8(self, x):
        shape = x.shape
        n = x.size
        q = np.empty(shape, dtype=np.uint8)
        if n == 0:
            return q, np.zeros(1, _F32), np.ones(1, _F32)
        if _per_channel(shape):
            rows, cols = shape[0] * shape[1], n // (shape[0] * shape[1])
            x3 = x.reshape(shape[0], shape[1], cols)
            lo = x3.min(axis=(0, 2))
            hi = x3.max(axis=(0, 2))
        else:
            rows, cols = 1, n
            lo = np.array([x.min()], dtype=_F32)
            hi = np.array([x.max()], dtype=_F32)
        lo64 = lo.astype(np.float64)
        hi64 = hi.astype(np.float64)
        if not (np.isfinite(lo64).all() and np.isfinite(hi64).all()):
            raise UserError("int8 compression needs finite activations, and this tensor holds NaN or inf; "
                            "use the fp16 or none scheme")
        if not (np.maximum(np.abs(lo64), np.abs(hi64)) + (hi64 - lo64) <= _INT8_MAX_SPAN).all():
            raise UserError("int8 compression cannot span values beyond +-1e38 in float32; "
                            "use the fp16 or none scheme")
        scale = ((hi64 - lo64) / 255.0).astype(_F32)
        scale[~(scale >= _TINY)] = 1.0  # constant channels (and ranges too small for a float32 step)
        lo = lo.astype(_F32)
        inv = (1.0 / scale.astype(np.float64)).astype(_F32)
        if rows > 1:
            reps = rows // lo.size
            lo_r = np.tile(lo, reps).reshape(rows, 1)
            inv_r = np.tile(inv, reps).reshape(rows, 1)
        else:
            lo_r = lo.reshape(1, 1)
            inv_r = inv.reshape(1, 1)
        x2 = x.reshape(rows, cols)
        q2 = q.reshape(rows, cols)
        sa = self._scratch(min(n, max(CHUNK, cols)))[0]
        if rows > 1:
            step = max(1, CHUNK // cols)
            spans = [(r, min(rows, r + step), 0, cols) for r in range(0, rows, step)]
        else:
            spans = [(0, 1, c, min(cols, c + CHUNK)) for c in range(0, cols, CHUNK)]
        for r0, r1, c0, c1 in spans:
            xs = x2[r0:r1, c0:c1]
            t = sa[:xs.size].reshape(xs.shape)
            np.subtract(xs, lo_r[r0:r1], out=t)
            np.multiply(t, inv_r[r0:r1], out=t)
            np.add(t, _HALF, out=q2[r0:r1, c0:c1], casting="unsafe")  # t >= 0: truncation rounds
        return q, lo, scale


# ---------------------------------------------------------------- decoding

def _bad(message):
    return ProtocolError("bad_encoding", message)


def _params(meta, key, counts):
    text = meta.get(key)
    if not isinstance(text, str):
        raise _bad("int8 encoding needs {!r} as a base64 string".format(key))
    if len(text) not in [_b64_len(k) for k in counts]:
        raise _bad("int8 parameter {!r} has {} base64 characters; expected {} ({} float32 values)".format(
            key, len(text), " or ".join(str(_b64_len(k)) for k in counts), " or ".join(str(k) for k in counts)))
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise _bad("int8 parameter {!r} is not valid base64".format(key))
    if len(raw) not in [4 * k for k in counts]:
        raise _bad("int8 parameter {!r} holds {} bytes; expected {}".format(
            key, len(raw), " or ".join(str(4 * k) for k in counts)))
    return np.frombuffer(raw, dtype=_F32)


def _decompress(codec, payload, nbytes):
    """The payload's bytes decompressed: exactly nbytes, never more allocated."""
    module = _import_codec(codec)
    if module is None:
        raise _bad("this side cannot decode it: " + _missing(codec))
    if codec == "zstd":
        try:
            declared = module.frame_content_size(payload)
        except module.ZstdError:
            raise _bad("the zstd payload is not a zstd frame")
        if declared != nbytes:
            raise _bad("the zstd frame declares {} bytes; the encoding's shape needs {}".format(
                "an unknown number of" if declared == -1 else declared, nbytes))
        if nbytes == 0:
            return b""
        dctx = getattr(_local, "zstd", None)
        if dctx is None:
            dctx = _local.zstd = module.ZstdDecompressor()
        try:
            raw = dctx.decompress(payload, max_output_size=nbytes)
        except module.ZstdError as e:
            raise _bad("corrupt zstd payload ({})".format(str(e).splitlines()[0] if str(e) else "error"))
    else:
        d = module.LZ4FrameDecompressor()
        try:
            # one byte of room beyond nbytes: a frame that fills it is longer than declared
            raw = d.decompress(payload, max_length=nbytes + 1)
        except RuntimeError as e:
            raise _bad("corrupt lz4 payload ({})".format(str(e).splitlines()[0] if str(e) else "error"))
        if len(raw) == nbytes and not d.eof:
            raise _bad("the lz4 payload is truncated")
        if d.unused_data:
            raise _bad("the lz4 payload has {} bytes after its frame".format(len(d.unused_data)))
    if len(raw) != nbytes:
        raise _bad("the {} payload decompresses to {}{} bytes; the encoding's shape needs {}".format(
            codec, "more than " if len(raw) > nbytes else "", min(len(raw), nbytes), nbytes))
    return raw


def _fp16_to_f32(raw, shape):
    """float16 -> float32 with integer operations (numpy's cast is ~8x slower); exact."""
    out = np.empty(shape, dtype=_F32)
    if out.size == 0:
        return out
    o = out.reshape(-1).view(np.int32)
    o[...] = raw.reshape(-1).view(np.int16)  # sign-extended
    u = o.view(np.uint32)
    np.left_shift(u, _U16, out=u)  # sign at bit 31, exponent and mantissa at 30..16
    np.right_shift(o, _I3, out=o)  # arithmetic: ... at 27..13, the sign copied into 30..28
    np.bitwise_and(o, _KEEP_SIGN, out=o)
    f = o.view(_F32)
    np.multiply(f, _UP, out=f)  # exponent bias 15 -> 127; subnormal halves become normal floats
    if f.max() >= 65536.0 or f.min() <= -65536.0:  # inf or NaN halves among them
        np.copyto(out.reshape(-1), raw.reshape(-1).view(_RAW_DTYPES["fp16"]))
    return out


def decode(meta, array, expected_shape, expected_dtype="float32", max_bytes=DEFAULT_MAX_FRAME_BYTES):
    """The tensor an Encoder encoded, as a float32 array of shape (N,) + expected_shape[1:].

    ``meta`` is the frame's "encoding" value (None: the frame carries the tensor as
    it is), ``array`` the frame's tensor, ``expected_shape`` the receiver's boundary
    shape (its batch entry, e.g. None, is ignored: N comes from meta["shape"]).
    Raises ProtocolError("bad_encoding") for anything that does not fit, or that would
    decode to more than ``max_bytes`` (the server passes its --max-frame-mb: a compressed
    frame may not grow beyond what an uncompressed one could carry).  Every check comes
    before anything is decompressed or allocated.
    """
    if expected_dtype not in DTYPES:
        raise UserError("unknown tensor dtype {!r}".format(expected_dtype))
    out_dtype = DTYPES[expected_dtype]
    expected_shape = tuple(expected_shape)
    if not expected_shape:
        raise UserError("expected_shape must include the batch dimension")
    tail = tuple(int(d) for d in expected_shape[1:])
    if not isinstance(array, np.ndarray):
        raise _bad("the frame carries no tensor")
    if meta is None:
        if array.dtype != out_dtype or array.ndim != len(expected_shape) or array.shape[1:] != tail \
                or array.shape[0] < 1:
            raise _bad("unencoded tensor {} {} does not match the expected {} (N, {})".format(
                array.dtype, list(array.shape), expected_dtype, ", ".join(str(d) for d in tail)))
        return array
    scheme, codec, shape = _encoded_layout(meta, tail, expected_dtype)
    numel = _numel(shape)
    limit = min(max_bytes, MAX_DECODED_BYTES)
    if numel * out_dtype.itemsize > limit:
        raise _bad("encoded shape {} would decode to {} bytes, more than the limit of {}".format(
            list(shape), numel * out_dtype.itemsize, limit))
    raw_dtype = _RAW_DTYPES.get(scheme, out_dtype)
    params = _int8_params(meta, shape) if scheme == "int8" else None
    raw = _raw_values(array, scheme, codec, raw_dtype, numel, shape)
    if scheme == "none":
        out = raw.reshape(shape)
        if codec != "none":
            out = out.copy()  # decompressed bytes are read-only; backends want a writable array
        return out
    if scheme == "fp16":
        return _fp16_to_f32(raw, shape)
    return _dequantize(raw, shape, numel, *params)


def _encoded_layout(meta, tail, expected_dtype):
    """(scheme, codec, shape) of an "encoding" value, checked against the receiver's (N,) + tail."""
    if not isinstance(meta, dict):
        raise _bad("the encoding must be a JSON object")
    scheme = meta.get("scheme")
    codec = meta.get("codec")
    if not isinstance(scheme, str) or scheme not in SCHEMES:
        raise _bad("unknown compression scheme {!r}; this side knows {}".format(scheme, ", ".join(SCHEMES)))
    if not isinstance(codec, str) or codec not in CODECS:
        raise _bad("unknown compression codec {!r}; this side knows {}".format(codec, ", ".join(CODECS)))
    shape = meta.get("shape")
    if not isinstance(shape, list) or len(shape) != len(tail) + 1 or not all(
            isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise _bad("encoded shape {!r} is not a list of {} integers".format(shape, len(tail) + 1))
    if shape[0] < 1 or tuple(shape[1:]) != tail:
        raise _bad("encoded shape {} does not match the expected (N, {}) with N >= 1".format(
            shape, ", ".join(str(d) for d in tail)))
    if scheme != "none" and expected_dtype != "float32":
        raise _bad("scheme {} encodes float32 tensors; this one is {}".format(scheme, expected_dtype))
    return scheme, codec, tuple(shape)


def _int8_params(meta, shape):
    """(lo, scale) of an int8 encoding: one pair per channel (or one in all), finite, in float32's range."""
    counts = (1, shape[1]) if len(shape) >= 2 and shape[1] > 1 else (1,)
    lo = _params(meta, "lo", counts)
    scale = _params(meta, "scale", counts)
    if lo.size != scale.size:
        raise _bad("int8 parameters 'lo' ({}) and 'scale' ({}) differ in length".format(lo.size, scale.size))
    if not np.isfinite(lo).all():
        raise _bad("int8 parameter 'lo' holds NaN or inf")
    if not (np.isfinite(scale).all() and (scale > 0).all()):
        raise _bad("int8 parameter 'scale' must be finite and positive")
    if not (np.abs(lo.astype(np.float64)) + 255.0 * scale.astype(np.float64) <= _INT8_MAX_SPAN).all():
        raise _bad("int8 parameters 'lo' and 'scale' reach beyond float32's range")
    return lo, scale


def _raw_values(array, scheme, codec, raw_dtype, numel, shape):
    """The scheme's values: the frame's tensor as it is, or decompressed (at most the bytes they need)."""
    if codec == "none":
        if array.dtype != raw_dtype or array.size != numel:
            raise _bad("scheme {} needs {} {} values for shape {}; the frame carries {} {}".format(
                scheme, numel, raw_dtype.name, list(shape), array.size, array.dtype.name))
        return array
    if array.dtype != np.uint8 or array.ndim != 1:
        raise _bad("codec {} needs a 1-D uint8 tensor, the frame carries {} {}".format(
            codec, array.dtype.name, list(array.shape)))
    return np.frombuffer(_decompress(codec, np.ascontiguousarray(array), numel * raw_dtype.itemsize),
                         dtype=raw_dtype)


def _dequantize(raw, shape, numel, lo, scale):
    """int8 codes back to float32: ``lo + code * scale``, per channel when there is a scale per channel."""
    out = np.empty(shape, dtype=_F32)
    if lo.size == 1:
        o, q, lo_b, scale_b = out.reshape(-1), raw.reshape(-1), lo, scale
    else:
        cols = numel // (shape[0] * shape[1]) if numel else 0
        o = out.reshape(shape[0], shape[1], cols)
        q = raw.reshape(o.shape)
        lo_b, scale_b = lo.reshape(1, -1, 1), scale.reshape(1, -1, 1)
    np.multiply(q, scale_b, out=o)
    np.add(o, lo_b, out=o)
    return out


# ---------------------------------------------------------------- planning

def encoded_bytes_estimate(scheme, codec, shape):
    """Upper estimate of the bytes one tensor of ``shape`` costs: payload + the "encoding" metadata.

    Codecs are assumed to gain nothing (their worst-case framing overhead is added).
    A batch entry of None counts as 1.
    """
    if scheme not in SCHEMES:
        raise UserError("unknown compression scheme {!r}; choose one of {}".format(scheme, ", ".join(SCHEMES)))
    if codec not in CODECS:
        raise UserError("unknown compression codec {!r}; choose one of {}".format(codec, ", ".join(CODECS)))
    shape = [1 if (i == 0 and d is None) else int(d) for i, d in enumerate(shape)]
    numel = _numel(shape)
    payload = numel * (_RAW_DTYPES[scheme].itemsize if scheme in _RAW_DTYPES else 4)
    if codec == "zstd":  # ZSTD_COMPRESSBOUND
        payload += (payload >> 8) + (((128 << 10) - payload) >> 11 if payload < (128 << 10) else 0)
    elif codec == "lz4":  # header 19, a 4-byte size per 64 KiB block, end mark 4, checksum 4
        payload += 27 + 4 * max(1, -(-payload // (64 << 10)))
    if scheme == "none" and codec == "none":
        return payload
    meta = {"scheme": scheme, "codec": codec, "shape": shape}
    if scheme == "int8":
        k = shape[1] if _per_channel(shape) else 1
        meta["lo"] = meta["scale"] = "A" * _b64_len(k)
    return payload + len(json.dumps({"encoding": meta}, separators=(",", ":")))
