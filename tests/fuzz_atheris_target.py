"""Coverage-guided fuzzing of the frame decoder with atheris (libFuzzer), run by tests/test_fuzz.py where atheris
is installed.  Run by hand for longer: ``PYTHONPATH=. python tests/fuzz_atheris_target.py -runs=200000``.

The first input byte picks the target: the raw bytes as a stream into FrameReader; a valid header around the
bytes as metadata (so the fuzzer gets past the magic at once); or the bytes as the JSON "encoding" of
compression.decode, with a small tensor.  Anything but a ProtocolError (or a known bug, counted) is a crash.
libFuzzer exits the process when it is done (Python's atexit does not run): the outcome counts go to stdout
from the last runs.  Pass a corpus directory holding tests' seed frames (test_fuzz.py writes one).
"""
import collections
import json
import os
import socket
import sys

import atheris

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

with atheris.instrument_imports(include=["runtime"]):
    from runtime.wire import codec, compression, sockets

from fuzz_frames import corpus  # noqa: E402

OUTCOMES = collections.Counter()
SEEDS = [f for _, f in corpus()]
LIMIT = 1 << 20


def known_bug(exc):
    if isinstance(exc, RecursionError) and "JSON" in str(exc):
        return "nested_json_meta"
    if isinstance(exc, ValueError) and ("Maximum allowed dimension" in str(exc) or "array is too big" in str(exc)):
        return "zero_size_tensor_huge_dims"
    return None


def read_all(data):
    a, b = socket.socketpair()
    try:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        a.sendall(data)
        a.shutdown(socket.SHUT_WR)
        b.settimeout(2.0)
        reader = sockets.FrameReader(b, LIMIT)
        while True:
            frame = reader.read()
            assert isinstance(frame.meta, dict)
            if frame.type in codec.TENSOR_TYPES:
                assert frame.array.nbytes <= LIMIT
                if "encoding" in frame.meta:
                    try:
                        compression.decode(frame.meta["encoding"], frame.array, (None, 2048, 1, 1))
                    except codec.ProtocolError:
                        pass
    finally:
        a.close()
        b.close()


def one(data):
    if not data:
        return
    mode, body = data[0] % 4, data[1:]
    try:
        if mode == 0:
            read_all(body)
        elif mode == 1:  # the bytes as a tensor frame's metadata, then a seed frame
            type_ = (codec.INFER, codec.ECHO, codec.HELLO, codec.RESULT)[len(body) % 4]
            payload = body[-64:]
            read_all(codec.HEADER.pack(codec.MAGIC, codec.VERSION, type_, 0, 1, len(body), len(payload), 0, 0) + body + payload
                     + SEEDS[len(body) % len(SEEDS)])
        elif mode == 2:  # a seed frame with the bytes spliced in
            seed = SEEDS[body[0] % len(SEEDS)] if body else SEEDS[0]
            at = (body[1] * 7) % (len(seed) + 1) if len(body) > 1 else 0
            read_all(seed[:at] + body[2:] + seed[at:])
        else:
            try:
                meta = json.loads(body.decode("utf-8", "replace"))
            except ValueError:
                OUTCOMES["not json"] += 1
                return
            try:
                compression.decode(meta, __import__("numpy").frombuffer(body or b"\0", "uint8").copy(),
                                   (None, 4, 1, 1))
            except codec.ProtocolError as exc:
                OUTCOMES["decode " + exc.code] += 1
                return
        OUTCOMES["ok"] += 1
    except codec.PeerClosed:
        OUTCOMES["accepted"] += 1
    except codec.ProtocolError as exc:
        OUTCOMES[exc.code] += 1
    except Exception as exc:  # noqa: BLE001
        bug = known_bug(exc)
        if bug is None:
            raise
        OUTCOMES["KNOWN BUG " + bug] += 1


RUNS = [int(a.split("=", 1)[1]) for a in sys.argv if a.startswith("-runs=")]


def target(data):
    one(data)
    if RUNS and sum(OUTCOMES.values()) >= RUNS[0] - 1:  # libFuzzer exits without running Python's atexit
        sys.stdout.write("outcomes {}\n".format(json.dumps(OUTCOMES)))
        sys.stdout.flush()


if __name__ == "__main__":
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()
