"""The wire, pinned: a fixed sequence of frames must encode to exactly these bytes.

The sequence is what one edge's session puts on the wire (authenticate, bind, infer,
probe, fetch, leave) and what the cloud answers.  Any change to the header layout,
the metadata's JSON encoding, field order, tensor layout or the token proofs changes
a digest below and fails this test: the wire is provably the same from one commit to
the next.  A deliberate change of the wire bumps ``VERSION`` and these digests
together (docs/PROTOCOL.md says so).

No sockets and no torch: frames are written into an in-memory sink and read back
with the same reader the edge and the cloud use.
"""
import hashlib

import numpy as np

from runtime.wire import auth, codec, sockets


class Sink(object):
    """A socket's sending half in memory: what ``send_frame`` writes, in order."""

    def __init__(self):
        self.data = bytearray()

    def sendmsg(self, buffers):
        n = 0
        for b in buffers:
            self.data += bytes(b)
            n += len(b)
        return n

    def sendall(self, b):
        self.data += bytes(b)


class Source(object):
    """A socket's receiving half in memory, handing out at most ``step`` bytes per receive."""

    def __init__(self, data, step=7):
        self.data = memoryview(bytes(data))
        self.step = step

    def recv_into(self, view, nbytes=0, flags=0):
        n = min(len(view), self.step, len(self.data))
        view[:n] = self.data[:n]
        self.data = self.data[n:]
        return n


NONCE = "00112233445566778899aabbccddeeff"


def sequence():
    x = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2) / 8
    logits = np.array([[0.5, -1.25, 3.0], [2.0, 0.0, -0.5]], dtype=np.float16)
    return [
        (codec.AUTH, 1, {}, None, 0, 0),
        (codec.CHALLENGE, 1, {"nonce": NONCE}, None, 0, 0),
        (codec.AUTH, 2, {"proof": auth.proof("secret", NONCE, auth.INFERENCE)}, None, 0, 0),
        (codec.DONE, 2, {}, None, 0, 0),
        (codec.HELLO, 3, {"model": "resnet50", "split": 20, "bundle_id": "b1", "codecs": ["zlib"], "protocol": codec.VERSION},
         None, 0, 0),
        (codec.WELCOME, 3, {"bundle_id": "b1", "split": 20, "manifest": {"id": "b1"}, "active": True}, None, 0, 0),
        (codec.INFER, 4, {"split": 20}, x, 0, 0),
        (codec.RESULT, 4, {}, logits, 1.25, 0.5),
        (codec.ECHO, 5, {"reply_bytes": 64}, np.zeros(16, dtype=np.uint8), 0, 0),
        (codec.ECHO, 5, {}, np.full(4, 7, dtype=np.uint8), 0, 0),
        (codec.FETCH, 6, {"bundle_id": "b1", "part": "head", "formats": ["onnx"]}, None, 0, 0),
        (codec.CHUNK, 6, {"path": "head.onnx", "offset": 0}, np.frombuffer(b"onnx-bytes", dtype=np.uint8), 0, 0),
        (codec.DONE, 6, {"files": 1}, None, 0, 0),
        (codec.PUSH, 7, {"proof": auth.proof("admin", NONCE, auth.ADMIN)}, None, 0, 0),
        (codec.ERROR, 7, {"code": "bad_token", "message": "wrong admin token"}, None, 0, 0),
        (codec.INFER, 8, {"split": 20}, np.zeros((1, 4), dtype=np.int64), 0, 0),
        # a cut where two tensors cross (protocol 3): the first's 5 bytes are padded to 8, the second has an encoding
        (codec.INFER, 9, {"tensors": [{}, {"encoding": {"scheme": "fp16", "codec": "none", "shape": [1, 3]}}]},
         (np.arange(5, dtype=np.uint8).reshape(1, 5), np.array([[1.0, -2.0, 0.5]], dtype=np.float16)), 0, 0),
        (codec.RESULT, 9, {}, (logits[:1], np.array([[7]], dtype=np.int64)), 2.0, 0.0),
        (codec.BYE, 0, {}, None, 0, 0),
    ]


# sha256 of each frame's bytes, in order, and of the whole stream
GOLDEN = [
    "b737a1c055c1bdaa9be901dda232112d6d529246de4acfee55081fc4d80ce00c",
    "74c121bd5adedf6456396a889e2d3c0685200279de7cf31d183b86585c472e0f",
    "42af2ff13c59b0b005e49d9ceb5399f3c1b97cba77782b3bc4682a403f8efb71",
    "526b221558b750caa8690e8f087b1df87b4ba34a601eebbe53e947bb61f83e57",
    "7170bddc407928802577410aea5d2c9eebea00508ddec3c3ef9e440f8511b764",
    "1ceed2148921751169383e5b185524cfd6a8089b458726f3cc3a0f152e84817b",
    "74daebfd5b32ddc39c812606e1da34137edb771b3ad33054e480b9f5ab797f69",
    "6ece95046580c30765481793075159533bdc1dc19d495b232278b975ce22c543",
    "7424d5a8f171742ebc4d4ab66dc21ec628f84bf90dccc346a77ec4a3c40893c3",
    "62ae5cbbfd3bc39f90faedb3cea0cd81b085381bda2f81cf5127032c51c580d8",
    "91eb2d4f6ea36cf0c7dc47d972cc2c64c6b7a89c22aae27ec54858caaf06c5af",
    "d7c713829e33e1dd48b87a59648a9994cf2bd2f022227a2aa342c2c50732ca9a",
    "31976a863d3355e7dc1e5b9ff5447aa677cd702465ff5d931dd5de29d9cf805f",
    "b4218f54850c43f39aa3e452ed9e9f188578d17ab8c57762823bbb9ca9b815d3",
    "d6b097c138ef97cdb05f0400f4e3a011fc46cc90fc457ae5c286ef7872af5ed2",
    "428c270d726460f1983499b83fcea97f5f13a6017fb43fc8cf06207d0fdbd76c",
    "90ae3c281a7b17ca50ee3c2a3b5a15a698bc5f8ce1f4fc0bc30f5d13815cfcd0",
    "2010b8bb65751dafa853052d6efc694cc9d9b4fc661ab41318ef3190bd9a052f",
    "6fe2f6c0abf7b6bdbe1e14c487a78ad8721f9461c4201a48eea6aa51af614c96",
]
GOLDEN_STREAM = "00a60d31843f56c11135546bac25cec109f5b0f15caf4cd53db85850516bccdd"


def encoded():
    frames = []
    for type_, rid, meta, array, compute_ms, queue_ms in sequence():
        sink = Sink()
        size = sockets.send_frame(sink, type_, rid, meta, array, compute_ms, queue_ms)
        assert size == len(sink.data)
        frames.append(bytes(sink.data))
    return frames


def test_each_frame_encodes_to_the_pinned_bytes():
    digests = [hashlib.sha256(f).hexdigest() for f in encoded()]
    assert digests == GOLDEN


def test_the_whole_stream_is_pinned_and_reads_back_frame_by_frame():
    stream = b"".join(encoded())
    assert hashlib.sha256(stream).hexdigest() == GOLDEN_STREAM
    reader = sockets.FrameReader(Source(stream))
    for type_, rid, meta, array, compute_ms, queue_ms in sequence():
        frame = reader.read()
        assert (frame.type, frame.request_id) == (type_, rid)
        sent_meta = dict(meta, tensors=meta.get("tensors", [{}] * len(array))) if isinstance(array, tuple) else meta
        assert without_layout(frame.meta) == without_layout(sent_meta)
        assert (frame.compute_ms, frame.queue_ms) == (compute_ms, queue_ms)
        if array is None:
            assert frame.array is None
        elif isinstance(array, tuple):
            assert isinstance(frame.array, tuple) and len(frame.array) == len(array)
            for got, sent in zip(frame.array, array):
                assert got.dtype == sent.dtype and np.array_equal(got, sent)
        else:
            assert frame.array.dtype == array.dtype and np.array_equal(frame.array, array)
    assert reader.buffered() == 0


def without_layout(meta):
    """A frame's metadata less what the codec adds (dtype and shape, per tensor where several)."""
    meta = {k: v for k, v in meta.items() if k not in ("dtype", "shape")}
    if "tensors" in meta:
        meta["tensors"] = [without_layout(t) for t in meta["tensors"]]
    return meta


def test_a_frame_of_several_tensors_byte_by_byte():
    frame = encoded()[-3]
    assert frame[4] == 3 and frame[5] == codec.INFER
    meta_len = int.from_bytes(frame[16:20], "little")
    payload_len = int.from_bytes(frame[20:28], "little")
    meta = frame[36:36 + meta_len]
    assert meta == (b'{"tensors":[{"dtype":"uint8","shape":[1,5]},{"encoding":{"scheme":"fp16","codec":"none",'
                    b'"shape":[1,3]},"dtype":"float16","shape":[1,3]}]}')
    payload = frame[36 + meta_len:]
    assert payload_len == len(payload) == 8 + 6
    assert payload[:8] == bytes([0, 1, 2, 3, 4, 0, 0, 0]), "the second tensor starts at a multiple of 8"
    assert np.array_equal(np.frombuffer(payload[8:], "<f2"), [1.0, -2.0, 0.5])


def test_the_header_of_an_infer_frame_byte_by_byte():
    infer = encoded()[6]
    # magic, version 3, type INFER (3), flags 0, request id 4, meta length, payload length 192, no timings
    assert infer[:4] == b"ESPL" and infer[4] == 3 and infer[5] == 3 and infer[6:8] == b"\0\0"
    assert int.from_bytes(infer[8:16], "little") == 4
    meta_len = int.from_bytes(infer[16:20], "little")
    assert int.from_bytes(infer[20:28], "little") == 2 * 3 * 2 * 2 * 4
    assert infer[28:36] == b"\0" * 8
    assert infer[36:36 + meta_len] == b'{"split":20,"dtype":"float32","shape":[2,3,2,2]}'
