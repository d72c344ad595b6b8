"""Hostile input, fuzzed (issue #7 item 3): the frame decoder and a live serve-cloud get random and mutated frames.

(a) In process: ``FrameReader`` over a real socketpair, and ``compression.decode``.  Every read is bounded by
    socket timeouts; tracemalloc measures what each read allocates; anything the reader accepts must be a
    well-formed frame that the runtime's own sender can send again.
(b) A real ``cli.py serve-cloud`` subprocess over loopback TCP.  Every connection must end in a close, with at
    most one ERROR frame and that one last; valid sequences get exactly the replies the protocol promises; the
    server's RSS stays bounded; pickles in any position are never unpickled; afterwards a good client still
    gets the same, correct results from the same process.

The hypothesis runs are derandomized (the same cases every run) and write no example database; set
EDGESPLIT_FUZZ_SCALE=10 for ten times the cases.  The last test prints how many cases each test tried.

The runtime bugs this fuzzing found (deeply nested metadata, NaN/Infinity in metadata, a zero-size shape with
huge dimensions, FETCH formats that are not strings) are fixed; the tests under "Found by the fuzzing" keep
each one fixed.
"""
import collections
import json
import os
import pickle
import random
import re
import socket
import subprocess
import sys
import threading
import time
import tracemalloc

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
psutil = pytest.importorskip("psutil")
import fuzz_frames as ff  # noqa: E402
from cloud_server import ServerProcess  # noqa: E402
from conftest import REPO  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st

from runtime.wire import codec, compression, sockets

FUZZ = dict(deadline=None, derandomize=True, database=None, print_blob=False,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
CASES = collections.Counter()                        # test -> fuzz cases tried
OUTCOMES = collections.defaultdict(collections.Counter)  # test -> outcome -> count
STATE = {}                                           # what one server test leaves for a later one
LIMIT = 1 << 20                                      # the decoder's --max-frame-mb in (a), and the server's in (b)
IO_TIMEOUT_S = 10.0                                  # no read or exchange may take longer: that would be a hang


def tried(test, outcome):
    CASES[test] += 1
    OUTCOMES[test][outcome] += 1


# ---------------------------------------------------------------- the server's log

def internal_tracebacks(server):
    """The exception lines of the tracebacks in the server's log."""
    return [l.rstrip("\n") for l in list(server.log) if re.match(r"^[A-Za-z_.]*(Error|Exception)\b.*", l)]


def unknown_tracebacks(server):
    return internal_tracebacks(server)


# ---------------------------------------------------------------- (a) the decoder, in process

class traced(object):
    """Traces allocations inside the block only (tracemalloc slows everything it watches):
    ``with traced() as peak: ...; peak()`` -> the most bytes allocated at once since the block began."""

    def __init__(self, on=True):
        self.on = on and not tracemalloc.is_tracing()

    def __enter__(self):
        if self.on:
            tracemalloc.start()
        return lambda: tracemalloc.get_traced_memory()[1] if self.on else 0

    def __exit__(self, *exc):
        if self.on:
            tracemalloc.stop()


def read_stream(data, allowed=None, limit=LIMIT, tensor_check=None, close=True, rcv_timeout=1.0, frame_timeout=2.0,
                measure=True):
    """Send ``data`` through a real socketpair into a FrameReader; read frames until it stops.

    -> (frames, error, elapsed_s, peak_bytes): ``error`` the exception that ended the reading (PeerClosed at
    a clean end), ``peak_bytes`` the most the reading had allocated at once (the frames it returns included).
    """
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)

    def send():
        try:
            a.sendall(data)
            if close:
                a.shutdown(socket.SHUT_WR)
        except OSError:  # the reader gave up and closed first
            pass
    sender = threading.Thread(target=send, daemon=True)
    frames, error, peak = [], None, 0
    try:
        sockets.set_timeouts(b, rcv_timeout)
        reader = sockets.FrameReader(b, limit, allowed_types=allowed, frame_timeout=frame_timeout)
        sender.start()
        with traced(measure) as peak_bytes:
            started = time.monotonic()
            while time.monotonic() - started < IO_TIMEOUT_S:
                try:
                    frame = reader.read(tensor_check)
                except Exception as exc:  # noqa: BLE001 - classified by the caller
                    error = exc
                    break
                frames.append(frame)
            elapsed = time.monotonic() - started
            peak = peak_bytes()
    finally:
        b.close()
        sender.join(IO_TIMEOUT_S)
        a.close()
    assert not sender.is_alive(), "the sender hung"
    return frames, error, elapsed, peak


def reencodes(frame):
    """An accepted frame is one the runtime's own sender can send again, and that reads back the same."""
    meta = dict(frame.meta)
    if frame.array is not None:
        meta.pop("dtype", None)
        meta.pop("shape", None)
    data = ff.wire(frame.type, meta, frame.array, frame.request_id)
    frames, error, _, _ = read_stream(data, measure=False)
    assert isinstance(error, codec.PeerClosed) and len(frames) == 1, error
    again = frames[0]
    assert (again.type, again.request_id) == (frame.type, frame.request_id)
    assert json.dumps(again.meta, sort_keys=True) == json.dumps(frame.meta, sort_keys=True)
    if frame.array is not None:
        assert again.array.dtype == frame.array.dtype and again.array.shape == frame.array.shape
        assert again.array.tobytes() == frame.array.tobytes()


def check_accepted(frame, allowed, limit):
    assert frame.type in codec.TYPE_NAMES and (allowed is None or frame.type in allowed)
    assert isinstance(frame.meta, dict)
    if frame.type in codec.TENSOR_TYPES:
        assert isinstance(frame.array, np.ndarray)
        assert frame.meta["dtype"] in codec.DTYPES and frame.array.dtype == codec.DTYPES[frame.meta["dtype"]]
        assert list(frame.array.shape) == frame.meta["shape"] and len(frame.array.shape) <= 8
        assert frame.array.nbytes <= limit
    else:
        assert frame.array is None


def classify(test, data, frames, error, elapsed, peak, allowed, limit=LIMIT):
    """The decoder's contract for one stream: accepted frames are well formed, the end is a clean close or a
    ProtocolError, nothing hangs, and no read allocates more than the limits allow."""
    assert elapsed < IO_TIMEOUT_S, "reading {} bytes took {:.1f} s".format(len(data), elapsed)
    # the reading may hold: the metadata of a frame (at most 1 MiB, twice while it is copied), its payload
    # (at most the limit), and what the frames it returned hold: their arrays and what JSON built from the
    # bytes actually sent
    assert peak <= 2 * codec.MAX_META_BYTES + limit + 64 * len(data) + (256 << 10), \
        "a read of {} bytes allocated {} bytes".format(len(data), peak)
    for f in frames:
        check_accepted(f, allowed, limit)
    if isinstance(error, codec.PeerClosed):
        outcome = "accepted"
    elif isinstance(error, codec.ProtocolError):
        assert error.code and str(error), repr(error)
        outcome = error.code
    else:
        raise AssertionError("FrameReader raised {!r} (not a ProtocolError) on {!r}".format(error, data[:300]))
    tried(test, outcome)
    return outcome


EDGE_CORPUS = ff.corpus()


@settings(max_examples=ff.scaled(150), **FUZZ)
@given(frames=st.lists(ff.one_of_frames(EDGE_CORPUS), min_size=1, max_size=6))
def test_decoder_reads_back_valid_frames_exactly(frames):
    """Valid frames, back to back, are accepted as they were sent (the other half of "rejected or valid")."""
    data = b"".join(f for _, f in frames)
    got, error, elapsed, peak = read_stream(data)
    assert isinstance(error, codec.PeerClosed), error
    assert len(got) == len(frames)
    for (label, sent), frame in zip(frames, got):
        fields, meta, payload = ff.parse(sent)
        assert (frame.type, frame.request_id) == (fields["type"], fields["request_id"]), label
        assert frame.meta == json.loads(meta.decode("utf-8")), label
        if fields["type"] in codec.TENSOR_TYPES:
            assert frame.array.tobytes() == payload, label
        else:
            assert frame.array is None, label
    classify("decoder: valid frames read back", data, got, error, elapsed, peak, None)


@settings(max_examples=ff.scaled(700), **FUZZ)
@given(stream=ff.stream(EDGE_CORPUS), allowed=st.sampled_from([None, codec.FROM_EDGE, codec.FROM_CLOUD]))
def test_decoder_rejects_or_accepts_hostile_streams_cleanly(stream, allowed):
    """Mutated valid frames, random frames and raw bytes: each frame is refused with a ProtocolError or read as
    a well-formed frame that can be sent again; no hang; bounded allocation."""
    data = b"".join(b for _, b in stream)
    frames, error, elapsed, peak = read_stream(data, allowed)
    classify("decoder: hostile streams", data, frames, error, elapsed, peak, allowed)
    for f in frames:
        reencodes(f)


@settings(max_examples=ff.scaled(150), **FUZZ)
@given(prefix=st.lists(ff.one_of_frames(EDGE_CORPUS), max_size=2),
       claim=st.one_of(
           st.tuples(st.just("payload_len"), st.sampled_from(codec.TENSOR_TYPES),
                     st.one_of(st.integers(LIMIT + 1, 2 ** 64 - 1), st.sampled_from([2 ** 40, 2 ** 63, 2 ** 64 - 1,
                                                                                      LIMIT + 1, 2 ** 32]))),
           st.tuples(st.just("meta_len"), st.sampled_from(sorted(codec.TYPE_NAMES)),
                     st.one_of(st.integers(codec.MAX_META_BYTES + 1, 2 ** 32 - 1),
                               st.sampled_from([codec.MAX_META_BYTES + 1, 2 ** 31, 2 ** 32 - 1])))),
       limit=st.sampled_from([LIMIT, codec.DEFAULT_MAX_FRAME_BYTES]), tail=st.binary(max_size=64))
def test_decoder_allocates_nothing_for_a_huge_claim(prefix, claim, limit, tail):
    """A header claiming 2^40 bytes (or anything over the limits) is refused before anything is allocated."""
    field, type_, size = claim
    if field == "payload_len" and size <= limit:
        size = limit + 1
    meta = ff._dumps({"dtype": "uint8", "shape": [size]}) if field == "payload_len" else b"{}"
    huge = ff.build(type_, meta, b"", payload_len=size if field == "payload_len" else 0,
                    meta_len=size if field == "meta_len" else None)
    data = b"".join(f for _, f in prefix) + huge + tail
    frames, error, elapsed, _ = read_stream(data, limit=limit, measure=False)
    assert len(frames) == len(prefix) and getattr(error, "code", None) == "too_large", error
    a, b = socket.socketpair()
    try:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        a.sendall(data)
        a.shutdown(socket.SHUT_WR)
        sockets.set_timeouts(b, 1.0)
        reader = sockets.FrameReader(b, limit)
        for _ in prefix:
            reader.read()
        with traced() as peak_bytes:
            with pytest.raises(codec.ProtocolError) as raised:
                reader.read()
            peak = peak_bytes()
    finally:
        a.close()
        b.close()
    assert raised.value.code == "too_large", raised.value
    assert peak < 64 << 10, "a claim of {} bytes of {} allocated {} bytes".format(size, field, peak)
    tried("decoder: huge claims", "too_large")


@settings(max_examples=ff.scaled(40), **FUZZ)
@given(sent=ff.item(EDGE_CORPUS))
def test_decoder_never_waits_past_its_timeouts_on_a_stalled_peer(sent):
    """The peer sends part of a stream and stalls (no close): the reader gives up within its timeouts."""
    label, data = sent
    started = time.monotonic()
    frames, error, elapsed, _ = read_stream(data, close=False, rcv_timeout=0.02, frame_timeout=0.1, measure=False)
    assert time.monotonic() - started < 2.0, label
    assert isinstance(error, (socket.timeout, codec.ProtocolError)), repr(error)
    tried("decoder: stalled peers", type(error).__name__ if not isinstance(error, codec.ProtocolError) else error.code)


# compression.decode: boundary shapes a receiver may expect (2048x1x1: the fuzzed bundle's; 4x16x32: int8 per
# channel; 1-D and 2-D: int8 per tensor)
DECODE_SHAPES = [(None, 2048, 1, 1), (None, 4, 16, 32), (None, 6), (None, 3, 5)]


@st.composite
def encoded(draw):
    """A tensor encoded by the runtime's Encoder, then maybe mutated:
    (x, expected_shape, meta, array, label, mutation)."""
    expected = draw(st.sampled_from(DECODE_SHAPES))
    n = draw(st.integers(1, 3))
    rng = np.random.RandomState(draw(st.integers(0, 2 ** 16)))
    x = (rng.standard_normal((n,) + expected[1:]) * draw(st.sampled_from([1e-3, 1.0, 50.0]))).astype(np.float32)
    if draw(st.booleans()):
        x[:, 0] = 1.5  # a constant channel
    scheme, lossless = draw(st.sampled_from(compression.SCHEMES)), draw(st.sampled_from(compression.CODECS))
    meta, array = compression.Encoder(scheme, lossless).encode(x)
    array = np.array(array)  # the receiver's own copy, as FrameReader makes
    kind = draw(st.sampled_from(("none", "none", "meta_field", "meta_replace", "bitflip", "truncate", "extend",
                                 "random_bytes", "retype", "bomb")))
    if kind == "meta_field" and meta is not None:
        meta = dict(meta)
        key = draw(st.sampled_from(("scheme", "codec", "shape", "lo", "scale", "extra")))
        if draw(st.integers(0, 3)) == 0:
            meta.pop(key, None)
        elif key == "shape":
            meta[key] = draw(st.one_of(ff.shape_values, st.integers(-1, 2 ** 40).map(
                lambda k: [k] + list(expected[1:]))))
        elif key in ("lo", "scale"):
            meta[key] = draw(st.one_of(
                st.lists(st.floats(width=32), min_size=1, max_size=6).map(
                    lambda v: compression._b64(np.array(v, np.float32))),
                st.text(max_size=12), ff.json_values))
        else:
            meta[key] = draw(st.one_of(st.sampled_from(compression.SCHEMES + compression.CODECS), ff.json_values))
    elif kind == "meta_replace":
        meta = draw(ff.json_values)
    elif kind == "bitflip" and array.size:
        raw = bytearray(array.tobytes())
        for bit in draw(st.lists(st.integers(0, 8 * len(raw) - 1), min_size=1, max_size=8)):
            raw[bit // 8] ^= 1 << (bit % 8)
        array = np.frombuffer(bytes(raw), array.dtype).reshape(array.shape).copy()
    elif kind == "truncate" and array.size:
        array = array.reshape(-1)[:draw(st.integers(0, array.size - 1))].copy()
    elif kind == "extend":
        array = np.concatenate([array.reshape(-1), array.reshape(-1)[:draw(st.integers(1, 64))]])
    elif kind == "random_bytes":
        array = np.frombuffer(draw(st.binary(min_size=array.nbytes, max_size=array.nbytes)),
                              array.dtype).reshape(array.shape).copy()
    elif kind == "retype":
        flat = array.reshape(-1).view(np.uint8)
        name = draw(st.sampled_from([k for k, d in codec.DTYPES.items() if flat.size % d.itemsize == 0]))
        array = flat.view(codec.DTYPES[name])
        if draw(st.booleans()) and array.size:
            array = array.reshape(1, -1)
    elif kind == "bomb" and lossless != "none":
        size = draw(st.sampled_from([1, 2, 64])) * x.nbytes + draw(st.integers(0, 4))
        zeros = bytes(size)
        if lossless == "zstd":
            import zstandard
            blob = zstandard.ZstdCompressor().compress(zeros)
        else:
            import lz4.frame
            blob = lz4.frame.compress(zeros)
        array = np.frombuffer(blob, np.uint8).copy()
    return x, expected, meta, array, "{}/{} {}".format(scheme, lossless, kind), kind


@settings(max_examples=ff.scaled(1000), **FUZZ)
@given(case=encoded())
def test_decode_rejects_or_decodes_hostile_encodings_cleanly(case):
    x, expected, meta, array, label, kind = case
    claimed = 0
    if isinstance(meta, dict) and isinstance(meta.get("shape"), list) and all(
            isinstance(d, int) for d in meta["shape"]):
        claimed = min(max(compression._numel(meta["shape"]), 0) * 4, compression.MAX_DECODED_BYTES)
    started = time.monotonic()
    with traced() as peak_bytes:
        try:
            out = compression.decode(meta, array, expected)
            error = None
        except codec.ProtocolError as exc:
            out, error = None, exc
        peak = peak_bytes()
    assert time.monotonic() - started < IO_TIMEOUT_S
    # at most: the decompressed bytes and the float32 result, for a shape the encoding declared
    assert peak <= 2 * claimed + 2 * array.nbytes + (256 << 10), "{}: {} bytes for a claim of {}".format(
        label, peak, claimed)
    if error is not None:
        assert error.code == "bad_encoding", error
        assert kind != "none", "{}: a valid encoding was refused: {}".format(label, error)
        tried("decode: hostile encodings", "bad_encoding")
        return
    assert out.dtype == np.float32 and out.shape[1:] == tuple(expected[1:]) and out.shape[0] >= 1, label
    if isinstance(meta, dict):
        assert list(out.shape) == meta["shape"]
    if kind == "none":
        scheme = meta["scheme"] if meta else "none"
        tol = {"none": 0.0, "fp16": np.abs(x) * 2.0 ** -10 + 1e-7,
               "int8": (x.max() - x.min()) / 255.0 * 0.51 + 1e-6}[scheme]
        assert np.all(np.abs(out - x) <= tol), label
    tried("decode: hostile encodings", "decoded")


def test_decode_allocates_nothing_for_huge_claims_and_bombs():
    tail = (2048, 1, 1)
    cases = []
    for n in (2 ** 17 + 1, 2 ** 40, 2 ** 63):  # a declared batch whose tensor would exceed MAX_DECODED_BYTES
        for scheme, lossless in (("none", "none"), ("fp16", "zstd"), ("int8", "lz4")):
            cases.append(({"scheme": scheme, "codec": lossless, "shape": [n] + list(tail), "lo": "AAAAAA==",
                           "scale": "AACAPw=="}, np.zeros(16, np.uint8)))
    import lz4.frame
    import zstandard
    zeros = bytes(64 << 20)  # 64 MiB of zeros: a few KiB compressed; the shape says 8 KiB
    cases.append(({"scheme": "none", "codec": "zstd", "shape": [1, 2048, 1, 1]},
                  np.frombuffer(zstandard.ZstdCompressor().compress(zeros), np.uint8)))
    cases.append(({"scheme": "none", "codec": "lz4", "shape": [1, 2048, 1, 1]},
                  np.frombuffer(lz4.frame.compress(zeros), np.uint8)))
    stream = zstandard.ZstdCompressor(write_content_size=False).compressobj()  # no content size declared
    cases.append(({"scheme": "none", "codec": "zstd", "shape": [1, 2048, 1, 1]},
                  np.frombuffer(stream.compress(zeros) + stream.flush(), np.uint8)))
    del zeros
    for meta, array in cases:
        with traced() as peak_bytes:
            with pytest.raises(codec.ProtocolError) as raised:
                compression.decode(meta, array, (None,) + tail)
            peak = peak_bytes()
        assert raised.value.code == "bad_encoding"
        # nothing near the decoded size (1 GiB and more claimed, 64 MiB in the bombs): the codecs' own buffers
        assert peak < 1 << 20, "{} allocated {} bytes".format(meta, peak)
        tried("decode: huge claims and bombs", "bad_encoding")


# ---------------------------------------------------------------- (b) a live serve-cloud

@pytest.fixture(scope="module")
def fuzz_bundle(tmp_path_factory):
    """One small bundle (ResNet-50 split 20: the tail is pooling and the classifier), ONNX only."""
    from exporter.bundle import export_bundle
    from exporter.options import ExportOptions
    root = tmp_path_factory.mktemp("fuzz-artifacts")
    directory, manifest = export_bundle("resnet50", "20", ExportOptions(random_init=True, out_dir=str(root), formats=("onnx",), batch_sizes=(1,)))
    return root, directory, manifest


@pytest.fixture(scope="module")
def fuzz_server(fuzz_bundle):
    srv = ServerProcess(fuzz_bundle[0], "--max-frame-mb", "1", "--read-timeout", "3", "--hello-timeout", "3")
    yield srv
    code = srv.stop()
    assert code == 0, srv.log_text()[-4000:]


@pytest.fixture(scope="module")
def server_corpus(fuzz_bundle):
    return ff.corpus(fuzz_bundle[2]["bundle_id"], cloud_frames=False)


@pytest.fixture(scope="module")
def reference(fuzz_bundle):
    """A fixed boundary tensor and the tail's output for it, computed here by the same ONNX file."""
    from runtime.backends import load_part
    from runtime.bundle.manifest import load_manifest
    x = np.maximum(np.random.RandomState(0).standard_normal((4, 2048, 1, 1)), 0).astype(np.float32)
    runner = load_part(load_manifest(fuzz_bundle[1]), "tail", "onnx", "cpu")
    return x, np.asarray(runner.run(x))


def rss(server):
    return psutil.Process(server.proc.pid).memory_info().rss


def exchange(server, data, half_close=True, timeout=IO_TIMEOUT_S):
    """Send raw bytes on a fresh connection (then half-close); read every reply until the server closes.

    -> (replies, closed, elapsed_s).  A reply the client cannot parse, or a server that neither answers nor
    closes within ``timeout``, fails the test.
    """
    sock = socket.create_connection((server.host, server.port), timeout=timeout)

    def send():
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:  # refused and closed while we were still sending
            pass
    sender = threading.Thread(target=send, daemon=True)
    started = time.monotonic()
    replies = []
    try:
        sender.start()
        reader = sockets.FrameReader(sock, codec.DEFAULT_MAX_FRAME_BYTES, allowed_types=codec.FROM_CLOUD)
        while True:
            try:
                replies.append(reader.read())
            except codec.PeerClosed:
                closed = True
                break
            except (ConnectionResetError, BrokenPipeError):  # closed with our unread bytes still queued
                closed = True
                break
            except socket.timeout:
                raise AssertionError("the server neither answered nor closed within {} s (sent {!r})".format(
                    timeout, data[:200]))
    finally:
        sock.close()
        sender.join(timeout)
    return replies, closed, time.monotonic() - started


def check_replies(replies, closed, labels):
    """The server's side of the contract for one connection: -> the outcome (an error code, or 'served')."""
    assert closed
    errors = [f for f in replies if f.type == codec.ERROR]
    assert len(errors) <= 1 and (not errors or replies[-1] is errors[0]), [codec.TYPE_NAMES[f.type] for f in replies]
    for f in replies:
        assert f.type in codec.FROM_CLOUD
        if f.type == codec.RESULT:
            assert f.array is not None and f.array.dtype in (np.float32, np.uint8)
            if f.array.dtype == np.float32:
                assert f.array.ndim == 2 and f.array.shape[1] == 100  # (N, classes); NaN in, NaN out
    if not errors:
        return "served"
    code, message = errors[0].meta.get("code"), errors[0].meta.get("message")
    assert isinstance(code, str) and re.match(r"^[a-z_]+$", code) and message, errors[0].meta
    assert code != "internal", "internal server error {} on {}".format(message, labels)
    return code


def expected_replies(labels):
    """What the protocol promises for a sequence of valid frames: reply types (CHUNK runs as one), then the
    error code that ends it, if any."""
    out, bound = [], False
    for label in labels:
        if label == "BYE":
            return out, None
        if label == "HELLO":
            out.append("WELCOME")
            bound = True
        elif label.startswith("INFER"):
            if not bound:
                return out, "no_hello"
            out.append("RESULT")
        elif label == "ECHO":
            out.append("RESULT")
        elif label == "FETCH":
            out += ["CHUNK", "DONE"]
        elif label == "STATUS":
            out.append("DONE")
        elif label == "AUTH":
            out.append("CHALLENGE")
        else:
            raise AssertionError(label)
    return out, None


def good_client(server, manifest, x):
    """HELLO, then INFER x, on a fresh connection: the tail's output."""
    sock = socket.create_connection((server.host, server.port), timeout=30)
    try:
        sockets.send_frame(sock, codec.HELLO, 1, {"role": "edge", "model": "resnet50", "split": 20,
                                        "bundle_id": manifest["bundle_id"], "protocol": codec.VERSION})
        reader = sockets.FrameReader(sock, allowed_types=codec.FROM_CLOUD)
        welcome = reader.read()
        assert welcome.type == codec.WELCOME and welcome.meta["bundle_id"] == manifest["bundle_id"], welcome.meta
        outs = []
        for i in range(3):
            sockets.send_frame(sock, codec.INFER, 2 + i, {}, x)
            result = reader.read()
            assert result.type == codec.RESULT and result.request_id == 2 + i, result.meta
            outs.append(result.array.copy())
        probe = np.arange(256, dtype=np.uint8)
        sockets.send_frame(sock, codec.ECHO, 9, {}, probe)
        echo = reader.read()
        assert echo.type == codec.RESULT and echo.array.tobytes() == probe.tobytes()
        sockets.send_frame(sock, codec.BYE, 10, {})
        return outs
    finally:
        sock.close()


def test_server_serves_a_good_client_before_the_fuzzing(fuzz_server, fuzz_bundle, reference):
    x, want = reference
    for out in good_client(fuzz_server, fuzz_bundle[2], x) + good_client(fuzz_server, fuzz_bundle[2], x[:1]):
        np.testing.assert_allclose(out, want[:len(out)], rtol=1e-5, atol=1e-5)
    STATE["rss_before"] = rss(fuzz_server)


_VALID_LABELS = ("HELLO", "INFER", "INFER:fp16/none", "INFER:int8/zstd", "INFER:fp16/lz4", "ECHO", "FETCH", "BYE",
                 "STATUS", "AUTH")


@settings(max_examples=ff.scaled(800), **FUZZ)
@given(data=st.data())
def test_server_answers_hostile_streams_with_an_error_and_a_close(fuzz_server, server_corpus, data):
    valid = ff.Corpus(lf for lf in server_corpus if lf[0] in _VALID_LABELS)
    if data.draw(st.integers(0, 4)) == 0:  # valid sequences: exactly the promised replies
        seq = data.draw(st.lists(ff.one_of_frames(valid), min_size=1, max_size=4))
        if data.draw(st.booleans()):
            seq = [server_corpus[0]] + seq  # HELLO first
        labels = [l for l, _ in seq]
        replies, closed, elapsed = exchange(fuzz_server, b"".join(f for _, f in seq))
        outcome = check_replies(replies, closed, labels)
        want, code = expected_replies(labels)
        got = [codec.TYPE_NAMES[f.type] for f in replies if f.type != codec.ERROR]
        got = [t for i, t in enumerate(got) if not (t == "CHUNK" and i and got[i - 1] == "CHUNK")]
        assert (got, None if outcome == "served" else outcome) == (want, code), labels
        tried("server: hostile streams", "valid sequence " + outcome)
        return
    seq = data.draw(ff.stream(server_corpus))
    if data.draw(st.booleans()):
        seq = [server_corpus[0]] + seq  # bound to the bundle, so INFERs get as far as the tail
    labels = [l for l, _ in seq]
    replies, closed, elapsed = exchange(fuzz_server, b"".join(f for _, f in seq))
    assert elapsed < IO_TIMEOUT_S
    tried("server: hostile streams", check_replies(replies, closed, labels))


def test_server_rss_stays_bounded_and_allocates_nothing_for_huge_claims(fuzz_server, server_corpus):
    """Headers claiming 2^40 bytes (and other sizes over the limits) are refused before anything is allocated:
    the server's resident memory does not grow with the claims."""
    hello = server_corpus[0][1]
    before = rss(fuzz_server)
    claims = []
    for size in [2 ** 40, 2 ** 63, 2 ** 64 - 1, LIMIT + 1, 2 ** 32] + [random.Random(i).randrange(LIMIT + 1, 2 ** 64)
                                                                     for i in range(25)]:
        claims.append(hello + ff.build(codec.INFER, {"dtype": "uint8", "shape": [size]}, b"", payload_len=size))
        claims.append(ff.build(codec.ECHO, {"dtype": "uint8", "shape": [size]}, b"", payload_len=size))
    for size in [2 ** 32 - 1, 2 ** 31, codec.MAX_META_BYTES + 1] + [random.Random(i).randrange(
            codec.MAX_META_BYTES + 1, 2 ** 32) for i in range(10)]:
        claims.append(ff.build(codec.HELLO, b"{}", meta_len=size))
        claims.append(hello + ff.build(codec.INFER, b"{}", meta_len=size))
    for data in claims:
        replies, closed, _ = exchange(fuzz_server, data)
        assert check_replies(replies, closed, ["huge claim"]) == "too_large"
        tried("server: huge claims", "too_large")
    grew = rss(fuzz_server) - before
    assert grew < 16 << 20, "serve-cloud grew by {:.1f} MiB over {} huge claims".format(grew / 2 ** 20, len(claims))


def test_server_cuts_off_stalled_and_partial_frames(fuzz_server, server_corpus):
    """A peer that sends part of a frame and stalls (no close) is closed at --read-timeout (3 s); one that sends
    nothing gets ERROR timeout at --hello-timeout (3 s).  All at once, so the whole test takes about 3 s."""
    rng = random.Random(7)
    hello = server_corpus[0][1]
    cases = [("nothing", b"")]
    for i, (label, frame) in enumerate(server_corpus):
        if label in ("HELLO", "INFER", "INFER:int8/zstd", "ECHO", "FETCH"):
            cases.append(("{} #{} cut".format(label, i), frame[:rng.randrange(1, len(frame))]))
    cases += [("HELLO + INFER cut", hello + server_corpus[1][1][:rng.randrange(1, 200)]),
              ("claims the limit, sends 10 bytes", ff.build(codec.ECHO, {"dtype": "uint8", "shape": [LIMIT]},
                                                             b"\0" * 10, payload_len=LIMIT)),
              ("claims 1 MiB of meta, sends 3", ff.build(codec.HELLO, b'{"a', meta_len=codec.MAX_META_BYTES))]
    results = {}

    def run(label, data):
        try:
            results[label] = exchange(fuzz_server, data, half_close=False, timeout=8.0)
        except BaseException as exc:  # noqa: BLE001 - reported below
            results[label] = exc
    threads = [threading.Thread(target=run, args=c, daemon=True) for c in cases]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert len(results) == len(cases)
    for label, result in results.items():
        assert not isinstance(result, BaseException), (label, result)
        replies, closed, elapsed = result
        errors = [f.meta["code"] for f in replies if f.type == codec.ERROR]
        assert closed and elapsed < 7.0, (label, elapsed)
        if label == "nothing":
            assert errors == ["timeout"]
        if errors in ([], ["timeout"]):  # waited for the rest of the frame, then cut off
            assert elapsed > 2.0, (label, elapsed)
        else:  # what had arrived was refused already (e.g. an INFER's header before any HELLO)
            assert check_replies(replies, closed, [label]) == errors[0]
        tried("server: stalled peers", errors[0] if errors else "closed")


class TouchFile(object):
    """Unpickling this runs ``touch PATH``."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, ("touch " + self.path,))


class OpenForWriting(object):
    """Unpickling this creates PATH (``open(PATH, "w")``)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def pickles(directory, tag):
    """Exploit pickles of every protocol, each creating its own file under ``directory`` if unpickled."""
    out = []
    for cls in (TouchFile, OpenForWriting):
        for proto in range(pickle.HIGHEST_PROTOCOL + 1):
            path = os.path.join(str(directory), "pwned-{}-{}-{}".format(tag, cls.__name__, proto))
            out.append((path, pickle.dumps(cls(path), protocol=proto)))
    return out


def pickle_positions(blob, bundle_id):
    """The same pickle as a raw stream, as metadata, inside metadata, as an INFER's payload (plain, padded to the
    boundary, zstd-compressed), as an ECHO's and a CHUNK's payload, and after an admin HELLO as a PUSH."""
    import zstandard
    hello = ff.build(codec.HELLO, {"model": "resnet50", "split": 20, "bundle_id": bundle_id})
    padded = (blob * (8192 // len(blob) + 1))[:8192]
    packed = zstandard.ZstdCompressor().compress(padded)
    text = blob.decode("latin-1")
    return [
        ("raw stream", blob),
        ("raw stream after HELLO", hello + blob),
        ("HELLO meta", ff.build(codec.HELLO, blob)),
        ("INFER meta", hello + ff.build(codec.INFER, blob, padded)),
        ("string in HELLO meta", ff.build(codec.HELLO, {"model": text, "split": 20, "bundle_id": text})),
        ("INFER payload (uint8)", hello + ff.build(codec.INFER, {"dtype": "uint8", "shape": [len(blob)]}, blob)),
        ("INFER payload (boundary)", hello + ff.build(codec.INFER, {"dtype": "float32", "shape": [1, 2048, 1, 1]},
                                                      padded)),
        ("INFER payload (zstd)", hello + ff.build(codec.INFER, {"dtype": "uint8", "shape": [len(packed)], "encoding": {
            "scheme": "none", "codec": "zstd", "shape": [1, 2048, 1, 1]}}, packed)),
        ("ECHO payload", ff.build(codec.ECHO, {"dtype": "uint8", "shape": [len(blob)]}, blob)),
        ("CHUNK payload", ff.build(codec.CHUNK, {"dtype": "uint8", "shape": [len(blob)], "file": "x", "offset": 0}, blob)),
        ("PUSH meta", ff.build(codec.HELLO, {"role": "admin"}) + ff.build(codec.PUSH, {"manifest": text, "proof": text})
         + ff.build(codec.CHUNK, {"dtype": "uint8", "shape": [len(blob)], "file": "x", "offset": 0}, blob)),
    ]


def test_pickles_in_every_position_are_never_unpickled(fuzz_server, fuzz_bundle, tmp_path):
    # the payloads are live: unpickling one here does create its file
    for path, blob in pickles(tmp_path / "sanity", "sanity")[:1] + pickles(tmp_path / "sanity", "sanity")[-1:]:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        obj = pickle.loads(blob)
        if hasattr(obj, "close"):
            obj.close()
        assert os.path.exists(path)
    markers = []
    for path, blob in pickles(tmp_path, "server"):
        for position, data in pickle_positions(blob, fuzz_bundle[2]["bundle_id"]):
            replies, closed, _ = exchange(fuzz_server, data)
            outcome = check_replies(replies, closed, [position])
            if position == "ECHO payload":  # the bytes come back as they are, never looked into
                assert outcome == "served" and replies[0].array.tobytes() == blob
            if position == "INFER payload (boundary)":  # a tensor of odd floats, nothing more
                assert outcome == "served" and replies[-1].type == codec.RESULT
            tried("server: pickles", outcome)
            markers.append(path)
        for position, data in pickle_positions(blob, "0123456789abcdef"):  # and the decoder, in process
            frames, error, _, _ = read_stream(data, measure=False)
            for f in frames:
                if f.type == codec.INFER and "encoding" in f.meta:
                    try:
                        compression.decode(f.meta["encoding"], f.array, (None, 2048, 1, 1))
                    except codec.ProtocolError:
                        pass
            tried("decoder: pickles", "accepted" if isinstance(error, codec.PeerClosed) else getattr(
                error, "code", type(error).__name__))
    time.sleep(0.5)  # anything the server might have run has had time to run
    created = [m for m in markers if os.path.exists(m)]
    assert not created, created
    assert not [f for f in os.listdir(str(tmp_path)) if f.startswith("pwned")]


def test_server_still_serves_correct_results_after_the_fuzzing(fuzz_server, fuzz_bundle, reference):
    assert fuzz_server.proc.poll() is None, "serve-cloud died: " + fuzz_server.log_text()[-4000:]
    x, want = reference
    for out in good_client(fuzz_server, fuzz_bundle[2], x):
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    after = rss(fuzz_server)
    if "rss_before" in STATE:
        grew = after - STATE["rss_before"]
        STATE["rss_grew"] = grew
        assert grew < 128 << 20, "serve-cloud grew by {:.1f} MiB during the fuzzing".format(grew / 2 ** 20)
    time.sleep(0.3)  # the log drains through a thread
    assert not unknown_tracebacks(fuzz_server), unknown_tracebacks(fuzz_server)


# ---------------------------------------------------------------- found by the fuzzing above, fixed

def _decoder_error(data):
    frames, error, _, _ = read_stream(data, measure=False)
    return error


def test_decoder_deeply_nested_meta_is_a_protocol_error():
    error = _decoder_error(ff.build(codec.HELLO, b"[" * 5000 + b"]" * 5000))
    assert isinstance(error, codec.ProtocolError) and error.code == "bad_meta", repr(error)


def test_decoder_zero_size_tensor_with_huge_dimensions_is_a_protocol_error():
    error = _decoder_error(ff.build(codec.ECHO, {"dtype": "uint8", "shape": [2 ** 63, 0]}))
    assert isinstance(error, codec.ProtocolError) and error.code == "bad_shape", repr(error)


def _server_bug_cases():
    return {
        "HELLO with deeply nested meta": (lambda bid: ff.build(codec.HELLO, b"[" * 5000 + b"]" * 5000), ("bad_meta",)),
        "HELLO with split Infinity": (lambda bid: ff.build(codec.HELLO, b'{"model":"resnet50","split":Infinity}'),
                                      ("bad_meta",)),
        "PROFILE with batch_size Infinity": (
            lambda bid: ff.build(codec.PROFILE, b'{"model":"resnet50","batch_size":Infinity}'), ("bad_meta",)),
        "compressed INFER of shape [2**63, 0]": (lambda bid: ff.build(codec.HELLO, {"model": "resnet50", "split": 20})
                                                 + ff.build(codec.INFER, {"dtype": "uint8", "shape": [2 ** 63, 0],
                                                                      "encoding": {"scheme": "none", "codec": "zstd",
                                                                                   "shape": [1, 2048, 1, 1]}}),
                                                 ("bad_shape", "bad_encoding")),
        "FETCH with a list among formats": (lambda bid: ff.build(codec.FETCH, {"bundle_id": bid, "part": "tail",
                                                                           "formats": [["onnx"]]}), ("bad_meta",)),
        "FETCH with a number among formats": (lambda bid: ff.build(codec.FETCH, {"bundle_id": bid, "part": "tail",
                                                                             "formats": [1]}),
                                              ("bad_meta", "unknown_format")),
    }


@pytest.mark.parametrize("case", sorted(_server_bug_cases()))
def test_server_answers_malformed_meta_with_a_protocol_error(case, fuzz_server, fuzz_bundle):
    make, codes = _server_bug_cases()[case]
    replies, closed, _ = exchange(fuzz_server, make(fuzz_bundle[2]["bundle_id"]))
    assert closed and replies and replies[-1].type == codec.ERROR  # the server refuses and closes...
    assert replies[-1].meta["code"] in codes, replies[-1].meta  # ... with the protocol's code, not "internal"


# ---------------------------------------------------------------- atheris (coverage-guided), where installed

def test_atheris_fuzzes_the_decoder_where_installed(tmp_path):
    pytest.importorskip("atheris")
    runs = ff.scaled(20000)
    # libFuzzer reads the peak RSS, which Linux carries over fork and exec from this process (a whole test session
    # grows to gigabytes): allow 2 GiB on top of what the child inherits
    import resource
    rss_limit_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024 + 2048
    seeds = tmp_path / "corpus"  # libFuzzer adds what it finds here
    seeds.mkdir()
    for i, (_, frame) in enumerate(EDGE_CORPUS):
        (seeds / "stream-{:02d}".format(i)).write_bytes(b"\0" + frame)
        (seeds / "splice-{:02d}".format(i)).write_bytes(bytes([2, i, 5]) + frame[:40])
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tests", "fuzz_atheris_target.py"), str(seeds),
                           "-runs={}".format(runs), "-seed=1", "-max_len=4096", "-len_control=0",
                           "-rss_limit_mb={}".format(rss_limit_mb), "-timeout=10",
                           "-artifact_prefix={}/".format(tmp_path)],  # a crash or oom input lands here, not in the tree
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    done = re.search(r"Done (\d+) runs", proc.stderr)
    assert done and int(done.group(1)) == runs, proc.stderr[-2000:]
    CASES["atheris: decoder (coverage-guided)"] += int(done.group(1))
    for line in proc.stdout.splitlines():
        if line.startswith("outcomes "):
            OUTCOMES["atheris: decoder (coverage-guided)"].update(json.loads(line.split(" ", 1)[1]))


# ---------------------------------------------------------------- the count

def test_zz_report_fuzz_cases_tried(capsys):
    """Prints the number of fuzz cases each test tried (shown without -s too)."""
    with capsys.disabled():
        print("\nfuzz cases tried: {} in all".format(sum(CASES.values())))
        for test in sorted(CASES):
            print("  {:<40} {:>6}".format(test, CASES[test]))
            print("      " + ", ".join("{} {}".format(k, v) for k, v in OUTCOMES[test].most_common()))
        if "rss_grew" in STATE:
            print("  serve-cloud RSS grew by {:.1f} MiB over the server fuzzing".format(STATE["rss_grew"] / 2 ** 20))
    assert sum(CASES.values()) > 0 or not CASES
