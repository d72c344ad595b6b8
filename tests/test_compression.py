"""Activation compression (runtime/wire/compression.py): round trips, error bounds, hostile inputs."""
import base64
import json
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from conftest import REPO

from runtime.errors import UserError
from runtime.wire import compression
from runtime.wire.codec import DTYPES, ProtocolError
from runtime.wire.compression import CODECS, SCHEMES, Encoder, decode, encoded_bytes_estimate

COMBOS = [(s, c) for s in SCHEMES for c in CODECS]


def _tensors():
    rng = np.random.RandomState(0)
    relu = np.maximum(rng.randn(1, 64, 32, 32), 0).astype(np.float32)
    batch = (rng.randn(3, 16, 24, 24) * 5 - 2).astype(np.float32)  # N > 1, negative values, per channel
    pooled = rng.rand(2, 2048, 1, 1).astype(np.float32)  # 1 value per channel: per tensor
    flat = (rng.randn(4, 10) * 100).astype(np.float32)  # 2-D
    vector = rng.randn(5).astype(np.float32)  # 1-D
    const = rng.randn(2, 8, 24, 24).astype(np.float32)
    const[:, 3] = 7.25  # a constant channel
    const[:, 5] = 0.0
    const[:, 6] = -3.0
    zeros = np.zeros((1, 32, 16, 16), np.float32)
    negative = -np.abs(rng.randn(2, 4, 10, 10)).astype(np.float32) - 1000.0  # offset far from 0
    return {"relu": relu, "batch": batch, "pooled": pooled, "flat": flat, "vector": vector,
            "const": const, "zeros": zeros, "negative": negative}


TENSORS = _tensors()


def _boundary(x):
    return (None,) + x.shape[1:]


def _roundtrip(x, scheme, codec):
    meta, payload = Encoder(scheme, codec).encode(x)
    if meta is not None:
        meta = json.loads(json.dumps(meta))  # what crosses the wire
    assert payload.dtype.name in DTYPES
    return meta, payload, decode(meta, payload, _boundary(x))


def _int8_params(meta):
    lo = np.frombuffer(base64.b64decode(meta["lo"]), "<f4")
    scale = np.frombuffer(base64.b64decode(meta["scale"]), "<f4")
    return lo, scale


# ---------------------------------------------------------------- round trips

@pytest.mark.parametrize("name", sorted(TENSORS))
@pytest.mark.parametrize("scheme,codec", COMBOS)
def test_round_trip(scheme, codec, name):
    x = TENSORS[name]
    meta, payload, y = _roundtrip(x, scheme, codec)
    assert y.shape == x.shape and y.dtype == np.float32 and y.flags.writeable and y.flags.c_contiguous
    if meta is None:
        assert scheme == "none" and codec == "none"
    else:
        assert meta["scheme"] == scheme and meta["codec"] == codec and meta["shape"] == list(x.shape)
        assert len(json.dumps(meta)) < 200 + 12 * (x.shape[1] if x.ndim > 1 else 1)  # base64, not float lists
    if codec != "none":
        assert payload.dtype == np.uint8 and payload.ndim == 1
    else:
        assert payload.shape == x.shape
        assert payload.dtype == {"none": np.float32, "fp16": np.float16, "int8": np.uint8}[scheme]
    if scheme == "none":
        assert np.array_equal(y, x)
    elif scheme == "fp16":
        assert np.array_equal(y, x.astype(np.float16).astype(np.float32))
        assert np.all(np.abs(y - x) <= np.abs(x) * 2.0 ** -11 + 2.0 ** -25)
    else:
        _check_int8_bound(x, y, meta)
    if name == "zeros" or (name == "const" and scheme != "fp16"):
        if name == "zeros":
            assert np.array_equal(y, x)
        else:
            assert np.array_equal(y[:, 3], x[:, 3]) and np.array_equal(y[:, 5], x[:, 5])


def _check_int8_bound(x, y, meta):
    lo, scale = _int8_params(meta)
    n, c = x.shape[0], (x.shape[1] if x.ndim > 1 else 1)
    if lo.size == 1:
        err = np.abs(y - x).max()
        mag = max(abs(float(x.min())), abs(float(x.max())))
        assert err <= scale[0] / 2 * (1 + 1e-4) + 8 * mag * 2.0 ** -24, (err, scale[0])
        return
    assert lo.size == c
    xe = x.reshape(n, c, -1)
    err = np.abs(y.reshape(n, c, -1) - xe).max(axis=(0, 2))
    mag = np.maximum(np.abs(xe.min(axis=(0, 2))), np.abs(xe.max(axis=(0, 2))))
    assert np.all(err <= scale / 2 * (1 + 1e-4) + 8 * mag * 2.0 ** -24), (err, scale)
    assert np.array_equal(lo, xe.min(axis=(0, 2)))


def test_int8_granularity_follows_the_values_per_channel():
    def count(x):
        return _int8_params(Encoder("int8").encode(x)[0])[0].size
    assert count(TENSORS["relu"]) == 64  # 32x32 per channel
    assert count(TENSORS["batch"]) == 16  # 24x24 = 576 per channel and sample
    assert count(np.ones((8, 16, 16, 32), np.float32)) == 16  # 512
    assert count(np.ones((8, 16, 8, 8), np.float32)) == 1  # 64 < 512: scales would outweigh the data
    assert count(TENSORS["pooled"]) == 1
    assert count(TENSORS["flat"]) == 1
    assert count(TENSORS["vector"]) == 1


def test_int8_bound_on_wide_ranges_and_tiny_ranges():
    rng = np.random.RandomState(1)
    x = (rng.randn(2, 6, 8, 8) * np.array([1e-30, 1e-3, 1.0, 1e3, 1e30, 1e37])[None, :, None, None]
         ).astype(np.float32)
    x[:, 0] += 1e-30  # a range that is a tiny step away from its offset
    x[:, 1] += 5e4
    with np.errstate(all="raise"):
        meta, _, y = _roundtrip(x, "int8", "none")
        assert np.all(np.isfinite(y))
        _check_int8_bound(x.astype(np.float64), y.astype(np.float64), meta)
    x[1, 5, 0, 0] = 3e38  # the span would overflow float32
    with pytest.raises(UserError, match="1e38"):
        Encoder("int8").encode(x)


def test_int8_refuses_non_finite_values():
    x = np.ones((1, 4, 8, 8), np.float32)
    x[0, 1, 2, 3] = np.nan
    with pytest.raises(UserError, match="NaN or inf"):
        Encoder("int8").encode(x)
    x[0, 1, 2, 3] = np.inf
    with pytest.raises(UserError, match="NaN or inf"):
        Encoder("int8", "zstd").encode(x)


def test_fp16_matches_numpy_and_saturates():
    rng = np.random.RandomState(2)
    # random bit patterns over the whole half range, normal halves only (|x| >= 2^-14)
    bits = rng.randint(0, 2 ** 31, size=200000).astype(np.uint32)
    bits |= rng.randint(0, 2, size=bits.size).astype(np.uint32) << 31
    x = bits.view(np.float32)
    x = x[np.isfinite(x) & (np.abs(x) <= 65504) & (np.abs(x) >= 2.0 ** -14)]
    x = np.concatenate([x, [0.0, -0.0, 65504.0, -65504.0, 65519.0, 1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11]])
    x = x.astype(np.float32).reshape(1, -1)
    _, payload = Encoder("fp16").encode(x)
    assert np.array_equal(payload.view(np.uint16), x.astype(np.float16).view(np.uint16))
    # subnormal halves: at most one unit (2^-24) off numpy's rounding
    tiny = (rng.randn(1, 70000) * 2.0 ** -16).astype(np.float32)
    _, payload = Encoder("fp16").encode(tiny)
    assert np.abs(payload.astype(np.float32) - tiny.astype(np.float16).astype(np.float32)).max() <= 2.0 ** -24
    # beyond the half range: saturate, never inf; NaN stays NaN
    big = np.full((1, 5000), 1e6, np.float32)
    big[0, 1] = -1e9
    big[0, 2] = 3.0
    _, _, y = _roundtrip(big, "fp16", "none")
    assert y[0, 0] == 65504.0 and y[0, 1] == -65504.0 and y[0, 2] == 3.0
    odd = np.array([[1.0, np.nan, np.inf, -np.inf]], np.float32)
    _, _, y = _roundtrip(odd, "fp16", "none")
    assert y[0, 0] == 1.0 and np.isnan(y[0, 1]) and y[0, 2] == 65504.0 and y[0, 3] == -65504.0


def test_fp16_decode_is_exact_for_every_half():
    halves = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    for values in (halves[np.isfinite(halves)], halves):  # the second has inf and NaN: numpy's path
        meta = {"scheme": "fp16", "codec": "none", "shape": [values.size]}
        y = decode(meta, values, (None,))
        ref = values.astype(np.float32)
        assert np.array_equal(y.view(np.uint32)[np.isfinite(ref)], ref.view(np.uint32)[np.isfinite(ref)])
        assert np.array_equal(np.isnan(y), np.isnan(ref)) and np.array_equal(np.isinf(y), np.isinf(ref))


def test_none_is_no_copy():
    x = TENSORS["relu"]
    meta, payload = Encoder().encode(x)
    assert meta is None and payload is x
    assert decode(None, x, (None, 64, 32, 32)) is x
    assert Encoder("none", "none").encode(x)[1] is x


def test_other_dtypes_travel_with_scheme_none():
    x = np.arange(24, dtype=np.int64).reshape(2, 12)
    meta, payload = Encoder("none", "zstd").encode(x)
    y = decode(json.loads(json.dumps(meta)), payload, (None, 12), "int64")
    assert y.dtype == np.int64 and np.array_equal(y, x)
    with pytest.raises(UserError, match="float32"):
        Encoder("fp16").encode(x)


def test_meta_is_small_json():
    x = np.random.RandomState(3).rand(8, 512, 16, 16).astype(np.float32)
    meta, _ = Encoder("int8", "lz4").encode(x)
    text = json.dumps(meta)
    assert json.loads(text) == meta
    assert len(text) < 2 * 512 * 4 * 4 // 3 + 200  # two base64 float32 arrays


@pytest.mark.parametrize("scheme,codec", COMBOS)
@pytest.mark.parametrize("name", ["relu", "pooled", "flat", "batch"])
def test_estimate_is_an_upper_bound(scheme, codec, name):
    x = TENSORS[name]
    est = encoded_bytes_estimate(scheme, codec, x.shape)
    meta, payload = Encoder(scheme, codec).encode(x)
    actual = payload.nbytes + (len(json.dumps({"encoding": meta}, separators=(",", ":"))) if meta else 0)
    assert actual <= est
    if codec == "none":
        assert est == actual
    assert encoded_bytes_estimate(scheme, codec, (None,) + x.shape[1:]) == encoded_bytes_estimate(
        scheme, codec, (1,) + x.shape[1:])


def test_encoder_rejects_unknown_names():
    with pytest.raises(UserError, match="scheme"):
        Encoder("int4")
    with pytest.raises(UserError, match="codec"):
        Encoder("fp16", "gzip")
    with pytest.raises(UserError):
        encoded_bytes_estimate("int8", "brotli", (1, 2))


def test_codec_packages_are_imported_lazily():
    code = ("import sys; import runtime.wire.compression as c; "
            "assert 'zstandard' not in sys.modules and 'lz4' not in sys.modules; "
            "c.Encoder('int8', 'none'); assert 'zstandard' not in sys.modules; "
            "c.Encoder('int8', 'zstd'); assert 'zstandard' in sys.modules and 'lz4' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_missing_codec_package_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "zstandard", None)  # makes `import zstandard` fail
    with pytest.raises(UserError, match="pip install zstandard"):
        Encoder("fp16", "zstd")
    assert "zstd" not in compression.available_codecs()
    meta = {"scheme": "fp16", "codec": "zstd", "shape": [1, 4]}
    with pytest.raises(ProtocolError, match="pip install zstandard") as e:
        decode(meta, np.zeros(10, np.uint8), (None, 4))
    assert e.value.code == "bad_encoding"


# ---------------------------------------------------------------- hostile input

SHAPE = (None, 8, 24, 24)  # per channel for int8 (576 values per channel)


def _good(scheme="int8", codec="none", n=2):
    x = np.random.RandomState(4).randn(n, 8, 24, 24).astype(np.float32)
    meta, payload = Encoder(scheme, codec).encode(x)
    return json.loads(json.dumps(meta)), payload


def _rejects(meta, payload, shape=SHAPE, match=None, dtype="float32"):
    with pytest.raises(ProtocolError) as e:
        decode(meta, payload, shape, dtype)
    assert e.value.code == "bad_encoding"
    assert "\n" not in str(e.value) and str(e.value)
    if match:
        assert match in str(e.value), str(e.value)


def test_rejects_unknown_scheme_and_codec():
    meta, payload = _good()
    _rejects(dict(meta, scheme="int4"), payload, match="scheme")
    _rejects(dict(meta, scheme=["int8"]), payload, match="scheme")
    _rejects(dict(meta, codec="gzip"), payload, match="codec")
    _rejects(dict(meta, codec=None), payload, match="codec")
    _rejects("int8", payload)
    _rejects([meta], payload)


def test_rejects_wrong_shapes():
    meta, payload = _good()
    _rejects(dict(meta, shape=[0, 8, 24, 24]), payload, match="N >= 1")
    _rejects(dict(meta, shape=[-2, 8, 24, 24]), payload)
    _rejects(dict(meta, shape=[2, 8, 10, 11]), payload)
    _rejects(dict(meta, shape=[2, 8, 576]), payload)
    _rejects(dict(meta, shape=[2, 8, 24, 24, 1]), payload)
    _rejects(dict(meta, shape=[True, 8, 24, 24]), payload)
    _rejects(dict(meta, shape=[2.0, 8, 24, 24]), payload)
    _rejects(dict(meta, shape="2,8,10,10"), payload)
    _rejects({k: v for k, v in meta.items() if k != "shape"}, payload)
    _rejects(dict(meta, shape=[3, 8, 24, 24]), payload, match="needs")  # batch of 3, payload of 2
    # plain frames (no encoding) are checked as well
    x = np.zeros((2, 8, 24, 24), np.float32)
    _rejects(None, x.reshape(2, 8, 576))
    _rejects(None, x.astype(np.float16))
    _rejects(None, np.zeros((0, 8, 24, 24), np.float32))


def test_rejects_wrong_payloads():
    meta, payload = _good("int8")
    _rejects(meta, payload[:1], match="needs")  # truncated
    _rejects(meta, payload.reshape(-1)[:-1])
    _rejects(meta, payload.astype(np.int8))  # wrong dtype for the scheme
    _rejects(meta, payload.astype(np.float32))
    _rejects(meta, None)
    meta, payload = _good("fp16")
    _rejects(meta, payload.view(np.uint16))
    _rejects(meta, payload.reshape(-1)[:-3])
    meta, payload = _good("none")
    _rejects(meta, payload.astype(np.float16))
    _rejects(meta, payload, dtype="int64")  # declared float32 bytes, receiver expects int64
    meta, payload = _good("fp16")
    _rejects(meta, payload, dtype="int64", match="float32")


def test_rejects_bad_int8_params():
    meta, payload = _good("int8")
    lo, scale = _int8_params(meta)

    def b64(a):
        return base64.b64encode(np.asarray(a, "<f4").tobytes()).decode("ascii")

    _rejects(dict(meta, lo=b64(lo[:-1])), payload, match="'lo'")  # too short
    _rejects(dict(meta, scale=b64(scale[:5])), payload, match="'scale'")
    _rejects(dict(meta, scale=b64(np.concatenate([scale, scale]))), payload, match="'scale'")  # too long
    _rejects(dict(meta, lo=b64(lo[:1])), payload, match="differ")  # 1 and C
    _rejects({k: v for k, v in meta.items() if k != "lo"}, payload, match="'lo'")
    _rejects(dict(meta, lo=[float(v) for v in lo]), payload, match="'lo'")  # a float list
    _rejects(dict(meta, lo="!" * len(meta["lo"])), payload, match="base64")
    _rejects(dict(meta, lo="\u00e9" * len(meta["lo"])), payload, match="base64")
    bad = scale.copy()
    bad[3] = np.nan
    _rejects(dict(meta, scale=b64(bad)), payload, match="finite")  # NaN scale
    bad[3] = np.inf
    _rejects(dict(meta, scale=b64(bad)), payload, match="finite")
    bad[3] = -1.0
    _rejects(dict(meta, scale=b64(bad)), payload, match="positive")
    bad[3] = 0.0
    _rejects(dict(meta, scale=b64(bad)), payload, match="positive")
    bad[3] = 2e36  # 255 * 2e36 overflows float32
    _rejects(dict(meta, scale=b64(bad)), payload, match="range")
    bad = lo.copy()
    bad[0] = -np.inf
    _rejects(dict(meta, lo=b64(bad)), payload, match="'lo'")
    bad[0] = -3.3e38
    _rejects(dict(meta, lo=b64(bad)), payload, match="range")
    # one (lo, scale) for the whole tensor is accepted for any shape
    x = decode(dict(meta, lo=b64([0.0]), scale=b64([1.0])), payload, SHAPE)
    assert np.array_equal(x, payload.astype(np.float32))


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_rejects_corrupt_compressed_payloads(codec):
    meta, payload = _good("fp16", codec)
    _rejects(meta, payload[: payload.size // 2])  # truncated
    _rejects(meta, payload[:4])
    _rejects(meta, np.zeros(0, np.uint8))
    _rejects(meta, np.frombuffer(b"garbage" * 50, np.uint8))
    _rejects(meta, payload.reshape(1, -1))  # not 1-D
    _rejects(meta, payload.view(np.int8))
    _rejects(dict(meta, scheme="int8"), payload)  # bytes for fp16, declared int8: wrong size
    other = dict(meta, codec="lz4" if codec == "zstd" else "zstd")
    _rejects(other, payload)
    if codec == "lz4":  # data after the frame
        _rejects(meta, np.concatenate([payload, payload]))


def _peak_bytes(fn):
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


BOMB_BYTES = 64 << 20  # what the bombs expand to; the declared tensor is 2x8x10x10 uint8 = 1600 bytes


def test_zstd_bomb_is_rejected_without_allocating():
    import zstandard
    zeros = bytes(BOMB_BYTES)
    meta, _ = _good("int8", "zstd")
    bombs = [
        zstandard.ZstdCompressor(level=3).compress(zeros),  # declares 64 MiB
        zstandard.ZstdCompressor(level=3, write_content_size=False).compress(zeros),  # declares nothing
    ]
    # a header that lies: declares exactly the expected 1600 bytes, holds 64 MiB
    liar = bytearray(bombs[0])
    assert liar[4] & 0xC0 == 0x80  # frame content size in a 4-byte field, after a window descriptor
    liar[6:10] = (1600).to_bytes(4, "little")
    assert zstandard.frame_content_size(bytes(liar)) == 1600
    bombs.append(bytes(liar))
    for bomb in bombs:
        assert len(bomb) < 64 << 10
        payload = np.frombuffer(bomb, np.uint8)
        peak = _peak_bytes(lambda: _rejects(meta, payload))
        assert peak < 1 << 20, peak


def test_lz4_bomb_is_rejected_without_allocating():
    import lz4.frame
    zeros = bytes(16 << 20)
    meta, _ = _good("int8", "lz4")
    for store_size in (True, False):
        bomb = lz4.frame.compress(zeros, store_size=store_size)
        assert len(bomb) < 128 << 10
        payload = np.frombuffer(bomb, np.uint8)
        peak = _peak_bytes(lambda: _rejects(meta, payload, match="more than"))
        assert peak < 1 << 20, peak


def test_huge_declared_batch_is_rejected_before_anything_is_allocated():
    meta, payload = _good("int8", "zstd")
    meta = dict(meta, shape=[10 ** 9, 8, 24, 24])
    peak = _peak_bytes(lambda: _rejects(meta, payload, match="limit"))
    assert peak < 1 << 20, peak
    meta, payload = _good("none", "lz4")
    _rejects(dict(meta, shape=[2 ** 62, 8, 24, 24]), payload, match="limit")
