"""Frames and hypothesis strategies for tests/test_fuzz.py: valid frames made by the runtime's own sender, and
mutations of them (bit flips, truncation, changed length fields, random JSON metadata, wrong dtype/shape, random
bytes, splices).  No mocks: every frame is captured from ``protocol.send_frame`` over a real socketpair."""
import base64
import json
import os
import socket
import threading

import numpy as np
from hypothesis import strategies as st

from runtime.wire import codec, sockets
from runtime.wire.compression import Encoder

FIELDS = ("magic", "version", "type", "flags", "request_id", "meta_len", "payload_len", "compute_us", "queue_us")
FIELD_BITS = {"version": 8, "type": 8, "flags": 16, "request_id": 64, "meta_len": 32, "payload_len": 64,
              "compute_us": 32, "queue_us": 32}
# lengths and sizes where off-by-one and overflow bugs live
BOUNDARIES = sorted({0, 1, 2, 3, 4, 7, 8, 35, 36, 37, 255, 256, 511, 512, 2047, 2048, 4096, 8191, 8192, 8193,
                     65535, 65536, 65537, 2 ** 20 - 1, 2 ** 20, 2 ** 20 + 1, 2 ** 24, 2 ** 26, 2 ** 26 + 1,
                     2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 40, 2 ** 62, 2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1})
VOCAB = ("model", "split", "bundle_id", "role", "protocol", "dtype", "shape", "encoding", "scheme", "codec", "lo",
         "scale", "part", "formats", "batch_size", "manifest", "activate", "proof", "file", "offset", "files", "code",
         "message", "nonce", "batch", "active")
VOCAB_VALUES = ("resnet50", "edge", "admin", "float32", "float16", "int8", "uint8", "int64", "float64", "object",
                "tail", "segments", "onnx", "torchscript", "none", "fp16", "zstd", "lz4", "rot13", "", "AAAA",
                "AAAAAA==")
DTYPE_VALUES = tuple(codec.DTYPES) + ("float64", "object", "<f4", "|u1", "bool", "", "FLOAT32", "float32 ")


def uint(bits):
    """Integers of a header field: anywhere in range, biased to the boundaries."""
    return st.one_of(st.integers(0, 2 ** bits - 1), st.sampled_from([b for b in BOUNDARIES if b < 2 ** bits]))


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.sampled_from(BOUNDARIES),
                         st.floats(), st.text(max_size=12), st.sampled_from(VOCAB_VALUES))
json_values = st.recursive(json_scalars, lambda c: st.one_of(
    st.lists(c, max_size=5), st.dictionaries(st.one_of(st.sampled_from(VOCAB), st.text(max_size=6)), c, max_size=5)),
    max_leaves=12)
json_objects = st.dictionaries(st.one_of(st.sampled_from(VOCAB), st.text(max_size=6)), json_values, max_size=6)
shape_values = st.one_of(
    st.lists(st.one_of(st.integers(-2, 4096), st.sampled_from(BOUNDARIES), st.sampled_from([0, 1, 2048])),
             max_size=10),
    st.lists(st.one_of(st.booleans(), st.floats(0, 10), st.text(max_size=3)), min_size=1, max_size=4),
    json_values)
dtype_values = st.one_of(st.sampled_from(DTYPE_VALUES), json_scalars)


def _dumps(value):
    return json.dumps(value).encode("utf-8")


# raw metadata bytes: any JSON (objects mostly, but lists, numbers, strings too), deep nesting, non-JSON,
# non-UTF-8, NaN/Infinity literals, huge integers
meta_bytes = st.one_of(
    json_objects.map(_dumps), json_objects.map(_dumps), json_values.map(_dumps),
    st.binary(max_size=64),
    st.integers(1, 3000).map(lambda d: b"[" * d + b"]" * d),
    st.integers(1, 3000).map(lambda d: b'{"a":' * d + b"1" + b"}" * d),
    st.sampled_from([b"", b"{", b"{}", b"[]", b"null", b"1", b'"x"', b'{"a":NaN}', b'{"split":Infinity}',
                     b'{"batch_size":-Infinity,"model":"resnet50"}', b'{"a":"\xff\xfe"}', b"\xef\xbb\xbf{}",
                     b'{"a":' + b"9" * 5000 + b"}", b'{"a":1e999}', b'{"a":1}\x00', b'{"a":1}{"b":2}',
                     b'{"dtype":"float32","dtype":"uint8","shape":[1]}']))


def build(type_, meta, payload=b"", request_id=1, magic=codec.MAGIC, version=codec.VERSION, flags=0, meta_len=None,
          payload_len=None, compute_us=0, queue_us=0):
    """A frame's bytes; ``meta`` a dict (JSON-encoded) or raw bytes; lengths default to the true ones."""
    m = meta if isinstance(meta, bytes) else _dumps(meta)
    return codec.HEADER.pack(magic, version, type_, flags, request_id, len(m) if meta_len is None else meta_len,
                         len(payload) if payload_len is None else payload_len, compute_us, queue_us) + m + payload


def parse(frame):
    """(header fields as a dict, meta bytes, payload bytes) of a well-formed frame."""
    fields = dict(zip(FIELDS, codec.HEADER.unpack_from(frame)))
    start = codec.HEADER_SIZE
    meta = frame[start:start + fields["meta_len"]]
    return fields, meta, frame[start + fields["meta_len"]:start + fields["meta_len"] + fields["payload_len"]]


def repack(fields, meta, payload, fix_lengths=True):
    f = dict(fields)
    if fix_lengths:
        f["meta_len"], f["payload_len"] = len(meta), len(payload)
    return codec.HEADER.pack(*[f[k] for k in FIELDS]) + meta + payload


def wire(type_, meta, array=None, request_id=1):
    """The exact bytes ``protocol.send_frame`` puts on a (real) socket for this frame."""
    a, b = socket.socketpair()
    got = []

    def drain():
        while True:
            chunk = b.recv(1 << 20)
            if not chunk:
                return
            got.append(chunk)
    t = threading.Thread(target=drain, daemon=True)
    t.start()
    try:
        n = sockets.send_frame(a, type_, request_id, meta, array)
        a.shutdown(socket.SHUT_WR)
        t.join(10)
    finally:
        a.close()
        b.close()
    data = b"".join(got)
    assert len(data) == n
    return data


class Corpus(list):
    """(label, bytes) of frames; a short repr, for hypothesis' reports."""

    def __repr__(self):
        return "<{} frames: {}>".format(len(self), " ".join(label for label, _ in self))


def corpus(bundle_id="0123456789abcdef", cloud_frames=True):
    """(label, bytes) of valid frames: what an edge sends (INFERs plain and compressed, ...), and with
    ``cloud_frames`` what a cloud sends."""
    rng = np.random.RandomState(5)

    def x(n):
        return np.maximum(rng.standard_normal((n, 2048, 1, 1)), 0).astype(np.float32)
    frames = [("HELLO", wire(codec.HELLO, {"role": "edge", "model": "resnet50", "split": 20, "bundle_id": bundle_id,
                                        "protocol": codec.VERSION}, request_id=1))]
    for n in (1, 3):
        frames.append(("INFER", wire(codec.INFER, {}, x(n), request_id=10 + n)))
    for scheme, lossless in (("fp16", "none"), ("int8", "none"), ("none", "zstd"), ("int8", "zstd"), ("fp16", "lz4"),
                             ("int8", "lz4")):
        meta, payload = Encoder(scheme, lossless).encode(x(1))
        frames.append(("INFER:{}/{}".format(scheme, lossless), wire(codec.INFER, {"encoding": meta}, payload, 20)))
    frames += [
        ("ECHO", wire(codec.ECHO, {}, rng.randint(0, 256, 64).astype(np.uint8), 30)),
        ("BYE", wire(codec.BYE, {}, request_id=31)),
        ("FETCH", wire(codec.FETCH, {"bundle_id": bundle_id, "part": "tail", "formats": ["onnx"]}, request_id=32)),
        ("PROFILE", wire(codec.PROFILE, {"model": "resnet50", "batch_size": 1}, request_id=33)),
        ("HELLO:admin", wire(codec.HELLO, {"role": "admin"}, request_id=34)),
        ("PUSH", wire(codec.PUSH, {"manifest": {"bundle_id": bundle_id}, "activate": True, "proof": "00" * 32}, None, 35)),
        ("CHUNK", wire(codec.CHUNK, {"file": "tail.onnx", "offset": 0}, np.zeros(16, np.uint8), 36)),
        ("DONE", wire(codec.DONE, {"files": 1}, request_id=37)),
    ]
    for name in ("AUTH", "STATUS"):  # frame types that newer protocol revisions have
        if hasattr(codec, name):
            frames.append((name, wire(getattr(codec, name), {}, request_id=38)))
    if cloud_frames:
        frames += [
            ("WELCOME", wire(codec.WELCOME, {"bundle_id": bundle_id, "protocol": codec.VERSION, "codecs": ["none"]})),
            ("RESULT", wire(codec.RESULT, {"batch": 2}, rng.standard_normal((2, 100)).astype(np.float32), 11)),
            ("ERROR", wire(codec.ERROR, {"code": "bad_meta", "message": "no"})),
            ("NOTICE", wire(codec.NOTICE, {"message": "exporting", "wait_s": 1800})),
            ("READY", wire(codec.READY, {"have": False})),
        ]
    return Corpus(frames)


def _flip(data, bits):
    out = bytearray(data)
    for bit in bits:
        out[(bit // 8) % len(out)] ^= 1 << (bit % 8)
    return bytes(out)


def _retyped(draw, payload):
    """A dtype and shape that agree with the payload's length (so only the receiver's own spec can refuse them)."""
    names = [n for n, d in codec.DTYPES.items() if len(payload) % d.itemsize == 0]
    name = draw(st.sampled_from(names))
    n = len(payload) // codec.DTYPES[name].itemsize
    divisors = [d for d in (1, 2, 4, 8, 16, 2048) if d and n % d == 0]
    k = draw(st.sampled_from(divisors))
    shape = draw(st.sampled_from([[n], [k, n // k], [n // k, k, 1, 1], [1, n], [n, 1, 1, 1], [0, n] if n == 0
                                  else [n // k, k]]))
    return name, shape


def one_of_frames(frames):
    """A (label, bytes) from ``frames`` (by index: the strategy's repr stays short)."""
    return st.integers(0, len(frames) - 1).map(lambda i: frames[i])


@st.composite
def mutated(draw, frames):
    """A valid frame from ``frames``, mutated once or twice: (description, bytes)."""
    label, frame = draw(one_of_frames(frames))
    steps = []
    for _ in range(draw(st.integers(1, 2))):
        if len(frame) >= codec.HEADER_SIZE:
            kind = draw(st.sampled_from(("bitflip", "header_bitflip", "truncate", "set_field", "length_delta",
                                         "replace_meta", "patch_meta", "retype", "patch_encoding", "payload_random",
                                         "insert_bytes", "splice", "duplicate")))
        else:  # a first step cut it short: bytes only
            kind = draw(st.sampled_from(("bitflip", "truncate", "insert_bytes", "splice", "duplicate")))
        steps.append(kind)
        fields, meta, payload = parse(frame) if len(frame) >= codec.HEADER_SIZE else (None, b"", b"")
        if kind == "bitflip":
            frame = _flip(frame, draw(st.lists(st.integers(0, 8 * len(frame) - 1), min_size=1, max_size=8)))
        elif kind == "header_bitflip":
            frame = _flip(frame, draw(st.lists(st.integers(0, 8 * codec.HEADER_SIZE - 1), min_size=1, max_size=4)))
        elif kind == "truncate":
            frame = frame[:draw(st.integers(0, max(0, len(frame) - 1)))]
        elif kind == "set_field":
            name = draw(st.sampled_from(FIELDS))
            value = draw(st.binary(min_size=4, max_size=4)) if name == "magic" else draw(uint(FIELD_BITS[name]))
            fields[name] = value
            frame = repack(fields, meta, payload, fix_lengths=False) + frame[codec.HEADER_SIZE + len(meta) + len(payload):]
        elif kind == "length_delta":
            name = draw(st.sampled_from(("meta_len", "payload_len")))
            fields[name] = max(0, fields[name] + draw(st.integers(-9, 9)))
            frame = repack(fields, meta, payload, fix_lengths=False)
        elif kind == "replace_meta":
            frame = repack(fields, draw(meta_bytes), payload)
        elif kind in ("patch_meta", "retype", "patch_encoding"):
            try:
                obj = json.loads(meta.decode("utf-8")) if meta else {}
            except (ValueError, RecursionError):  # a first step left no JSON object (or one nested too deep)
                obj = None
            if not isinstance(obj, dict):
                frame = repack(fields, draw(meta_bytes), payload)
                continue
            if kind == "patch_meta":
                key = draw(st.one_of(st.sampled_from(VOCAB), st.text(max_size=4)))
                if draw(st.booleans()) and key in obj:
                    del obj[key]
                else:
                    obj[key] = draw(dtype_values if key == "dtype" else shape_values if key == "shape"
                                    else json_values)
            elif kind == "retype":
                if draw(st.booleans()):
                    obj["dtype"], obj["shape"] = _retyped(draw, payload)
                else:
                    obj["dtype"], obj["shape"] = draw(dtype_values), draw(shape_values)
                if draw(st.booleans()):
                    fields["type"] = draw(st.sampled_from((codec.INFER, codec.ECHO, codec.RESULT, codec.CHUNK, codec.HELLO)))
            else:
                enc = obj.get("encoding")
                if not isinstance(enc, dict):
                    enc = obj["encoding"] = {"scheme": "none", "codec": "none", "shape": [1, 2048, 1, 1]}
                key = draw(st.sampled_from(("scheme", "codec", "shape", "lo", "scale", "extra")))
                if draw(st.integers(0, 4)) == 0:
                    enc.pop(key, None)
                elif key == "shape":
                    enc[key] = draw(st.one_of(shape_values, st.integers(1, 2 ** 40).map(lambda n: [n, 2048, 1, 1])))
                elif key in ("lo", "scale"):
                    enc[key] = draw(st.one_of(st.binary(max_size=12).map(
                        lambda b: base64.b64encode(b).decode("ascii")), json_values))
                else:
                    enc[key] = draw(st.one_of(st.sampled_from(("none", "fp16", "int8", "zstd", "lz4", "bf16")),
                                              json_values))
            frame = repack(fields, _dumps(obj), payload)
        elif kind == "payload_random":
            frame = repack(fields, meta, draw(st.binary(min_size=len(payload), max_size=len(payload))))
        elif kind == "insert_bytes":
            at = draw(st.integers(0, len(frame)))
            frame = frame[:at] + draw(st.binary(min_size=1, max_size=16)) + frame[at:]
        elif kind == "splice":
            _, other = draw(one_of_frames(frames))
            frame = frame[:draw(st.integers(0, len(frame)))] + other[draw(st.integers(0, len(other))):]
        else:
            frame = frame + frame
        if not frame:
            frame = b"\0"
    return "{} {}".format(label, "+".join(steps)), frame


@st.composite
def random_frame(draw):
    """A frame with a right magic and version and anything else: (description, bytes)."""
    types = sorted(codec.TYPE_NAMES)
    type_ = draw(st.one_of(st.sampled_from(types), st.integers(0, 255)))
    meta = draw(meta_bytes)
    payload = draw(st.binary(max_size=48))
    true_lengths = draw(st.booleans())
    frame = build(type_, meta, payload, request_id=draw(uint(64)),
                  meta_len=None if true_lengths else draw(uint(32)),
                  payload_len=None if true_lengths else draw(uint(64)), flags=draw(uint(16)))
    return "random type {}".format(type_), frame


raw_bytes = st.one_of(st.binary(min_size=1, max_size=200),
                      st.binary(min_size=1, max_size=32).map(lambda b: codec.MAGIC + b)).map(lambda b: ("raw bytes", b))


def item(frames):
    """One piece of a hostile stream: a mutated valid frame (mostly), a random frame, a valid one, or raw bytes."""
    return st.one_of(mutated(frames), mutated(frames), mutated(frames), random_frame(),
                     one_of_frames(frames), raw_bytes)


def stream(frames, max_items=4):
    """A list of (description, bytes) sent back to back on one connection."""
    return st.lists(item(frames), min_size=1, max_size=max_items)


def scaled(n):
    """Example counts, scaled by $EDGESPLIT_FUZZ_SCALE (e.g. 10 for a long fuzzing run)."""
    return max(1, int(n * float(os.environ.get("EDGESPLIT_FUZZ_SCALE", "1"))))
