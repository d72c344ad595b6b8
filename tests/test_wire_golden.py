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
        (codec.BYE, 0, {}, None, 0, 0),
    ]


# sha256 of each frame's bytes, in order, and of the whole stream
GOLDEN = [
    "de6fd92f6b295014b1b876a1089248abc4aac1f2714656c76f37e7dfa017db1b",
    "418d8388797ab5c0a7210f5698a59b48d8fcfd379b395b6f6455e0a77e530aff",
    "1aa67cbc1ecd2f8c6ee3dbe54efdc2c04ec0575490ec121ce72501368e2746fb",
    "1fe65dd0a1f319726cda700d1b128bcfb578abb826d40dda1a5c3dc28ab9a72e",
    "87ee873958769ea378aee6428558074eb1743b8aa260a0642d7763457354a467",
    "e45d068b4c78c59d9d30d4d18103a723cccef6dbe61a75d52f52660423af7458",
    "0e19b998fef587fd23d7de00fad99c78319b00dd7b4affb0a1341cb8374f1dc6",
    "55ab7b15148f2e4ff85910ad4fbbbe5a70ce17806a58ded3a3f9cce16bb400fa",
    "0264f6a9601920422e32d05694c90656990100f0d4a4e96599b8740ad7fbe83a",
    "6453562565efc258b696e49b57716e381546efa2141b3df2ebc5b2148019059b",
    "2fd0782c620de203b255305cce9f9dc6a2c565e2d99890779ac8135501dcc7be",
    "ec0d54747fcd10039c3ee1b04392ada21b4efaaeb63d88410a906108a4b8e372",
    "f48146560dae9c0ae89d6ae7a4d18dbee8a0e45bcdb4092bb662a7728c663191",
    "6077a0098d5eeea655ca42065b502fa62f176974d23218abd9205f9d4e85f410",
    "0de7bb22dc5a281175d1db357684633d2f8e7eb2300eb12230643d9a60f58ada",
    "c195e5c40be870e7265d2b248a46fabd17d367840583618b63e86258da1d725c",
    "4ce8f3768a951cf0cb580ae043e6d7e7c0c613cb81b9b090e1a735ba43fe4212",
]
GOLDEN_STREAM = "e93df820082d247b8f7a469193f55acadec93dfd559860d5047b36593136c007"


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
        assert {k: v for k, v in frame.meta.items() if k not in ("dtype", "shape")} == meta
        assert (frame.compute_ms, frame.queue_ms) == (compute_ms, queue_ms)
        if array is None:
            assert frame.array is None
        else:
            assert frame.array.dtype == array.dtype and np.array_equal(frame.array, array)
    assert reader.buffered() == 0


def test_the_header_of_an_infer_frame_byte_by_byte():
    infer = encoded()[6]
    # magic, version 2, type INFER (3), flags 0, request id 4, meta length, payload length 192, no timings
    assert infer[:4] == b"ESPL" and infer[4] == 2 and infer[5] == 3 and infer[6:8] == b"\0\0"
    assert int.from_bytes(infer[8:16], "little") == 4
    meta_len = int.from_bytes(infer[16:20], "little")
    assert int.from_bytes(infer[20:28], "little") == 2 * 3 * 2 * 2 * 4
    assert infer[28:36] == b"\0" * 8
    assert infer[36:36 + meta_len] == b'{"split":20,"dtype":"float32","shape":[2,3,2,2]}'
