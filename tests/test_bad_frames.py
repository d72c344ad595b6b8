"""Every bad frame is rejected with an error frame and a closed connection, while a good edge keeps being served."""
import json
import os
import pickle
import socket
import subprocess
import sys

import numpy as np
import pytest
from cloud_server import ServerProcess
from conftest import REPO

from exporter.bundle import export_bundle
from exporter.options import ExportOptions
from runtime.wire import codec, sockets


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    _, manifest = export_bundle("resnet50", "20", ExportOptions(random_init=True, out_dir=str(root), formats=["onnx"]))
    return root, manifest


@pytest.fixture(scope="module")
def server(bundle):
    srv = ServerProcess(bundle[0], "--max-frame-mb", "1")
    yield srv
    assert srv.stop() == 0


def header(type_=codec.INFER, meta_len=0, payload_len=0, magic=codec.MAGIC, version=codec.VERSION, request_id=7):
    return codec.HEADER.pack(magic, version, type_, 0, request_id, meta_len, payload_len, 0, 0)


def frame(type_, meta, payload=b"", **kw):
    m = json.dumps(meta).encode()
    return header(type_, len(m), len(payload), **kw) + m + payload


def hello(manifest):
    return frame(codec.HELLO, {"model": "resnet50", "split": 20, "bundle_id": manifest["bundle_id"]})


def infer(dtype="float32", shape=(1, 2048, 1, 1), payload=None):
    if payload is None:
        payload = np.zeros(shape, dtype=dtype).tobytes()
    return frame(codec.INFER, {"dtype": dtype, "shape": list(shape)}, payload)


def _zstd_bomb():
    import zstandard
    blob = zstandard.ZstdCompressor().compress(b"\0" * (1 << 30))
    return frame(codec.INFER, {"dtype": "uint8", "shape": [len(blob)], "encoding": {
        "scheme": "none", "codec": "zstd", "shape": [1, 2048, 1, 1]}}, blob)


class Exploit(object):
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, ("touch " + self.path,))


def exchange(server, data, half_close=False):
    """Send raw bytes; return the ERROR frame's code (after any WELCOME) and whether the server then closed."""
    sock = socket.create_connection((server.host, server.port), timeout=20)
    try:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        reader = sockets.FrameReader(sock)
        while True:
            f = reader.read()
            if f.type == codec.ERROR:
                break
            assert f.type == codec.WELCOME
        try:
            closed = sock.recv(1) == b""
        except ConnectionResetError:  # closed with our unread bytes still queued: the kernel resets
            closed = True
        return f.meta["code"], f.meta["message"], closed
    finally:
        sock.close()


CASES = {
    "bad magic": (lambda m, t: b"NOPE" + header()[4:], "bad_magic", False),
    "bad version": (lambda m, t: header(codec.HELLO, version=9), "bad_version", False),
    "unknown type": (lambda m, t: header(type_=99), "bad_type", False),
    "reply type from an edge": (lambda m, t: frame(codec.RESULT, {}), "bad_type", False),
    "oversize length (2^40)": (lambda m, t: hello(m) + header(codec.INFER, 2, 1 << 40) + b"{}", "too_large", False),
    "oversize metadata": (lambda m, t: header(codec.HELLO, meta_len=1 << 30), "too_large", False),
    "metadata not JSON": (lambda m, t: header(codec.HELLO, meta_len=4) + b"\xff\xfe{]", "bad_meta", False),
    "INFER before HELLO": (lambda m, t: infer(), "no_hello", False),
    "wrong dtype (float64)": (lambda m, t: hello(m) + infer("float64"), "bad_dtype", False),
    "wrong dtype (int8, whitelisted)": (lambda m, t: hello(m) + infer("int8"), "bad_dtype", False),
    "unknown dtype": (lambda m, t: hello(m) + frame(codec.INFER, {"dtype": "object", "shape": [1]}, b"\0" * 8),
                      "bad_dtype", False),
    "wrong shape": (lambda m, t: hello(m) + infer(shape=(1, 2048, 2, 2)), "bad_shape", False),
    "shape and length disagree": (lambda m, t: hello(m) + frame(codec.INFER, {"dtype": "float32",
                                                                        "shape": [1, 2048, 1, 1]}, b"\0" * 16),
                                  "bad_shape", False),
    "truncated frame": (lambda m, t: hello(m) + infer()[:200], "truncated", True),
    "pickle payload": (lambda m, t: pickle.dumps(Exploit(t)), "bad_magic", False),
    "compressed: unknown scheme": (lambda m, t: hello(m) + frame(codec.INFER, {
        "dtype": "uint8", "shape": [2048], "encoding": {"scheme": "rot13", "codec": "none", "shape": [1, 2048, 1, 1]}},
        b"\0" * 2048), "bad_encoding", False),
    "compressed: zstd bomb (1 GiB claimed, 2048 values declared)": (lambda m, t: hello(m) + _zstd_bomb(), "bad_encoding",
                                                                    False),
    "compressed: int8 without scales": (lambda m, t: hello(m) + frame(codec.INFER, {
        "dtype": "uint8", "shape": [1, 2048, 1, 1], "encoding": {"scheme": "int8", "codec": "none",
                                                                 "shape": [1, 2048, 1, 1]}}, b"\0" * 2048),
                                        "bad_encoding", False),
    "version-2 peer": (lambda m, t: header(codec.HELLO, version=2), "bad_version", False),
    "several tensors: two to a one-tensor bundle": (lambda m, t: hello(m) + frame(codec.INFER, {"tensors": [
        {"dtype": "float32", "shape": [1, 2048, 1, 1]}, {"dtype": "float32", "shape": [1, 2]}]}, b"\0" * 8200),
        "bad_shape", False),
    "several tensors: sizes and length disagree": (lambda m, t: hello(m) + frame(codec.INFER, {"tensors": [
        {"dtype": "float32", "shape": [1, 2048, 1, 1]}, {"dtype": "uint8", "shape": [1, 3]}]}, b"\0" * 8196),
        "bad_shape", False),
    "several tensors: not a list": (lambda m, t: hello(m) + frame(codec.INFER, {"tensors": {"a": 1}}, b"\0" * 8),
                                    "bad_meta", False),
    "several tensors: 17": (lambda m, t: hello(m) + frame(codec.INFER, {"tensors": [
        {"dtype": "uint8", "shape": [8]}] * 17}, b"\0" * 8 * 17), "bad_meta", False),
    "several tensors: in an ECHO": (lambda m, t: frame(codec.ECHO, {"tensors": [
        {"dtype": "uint8", "shape": [8]}, {"dtype": "uint8", "shape": [8]}]}, b"\0" * 16), "bad_meta", False),
    "unknown bundle": (lambda m, t: frame(codec.HELLO, {"model": "resnet50", "split": 20, "bundle_id": "0" * 16}),
                       "bundle_mismatch", False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_frame_is_rejected_while_a_good_edge_completes(case, server, bundle, tmp_path):
    root, manifest = bundle
    make, code, half_close = CASES[case]
    marker = str(tmp_path / "pwned")
    good = subprocess.Popen([sys.executable, os.path.join(REPO, "cli.py"), "run-edge", "--cloud", server.address,
                             "--artifacts", str(root), "--split", "20", "--dataset", "synthetic", "--limit", "40"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    got, message, closed = exchange(server, make(manifest, marker), half_close)
    assert (got, closed) == (code, True), message
    assert message
    out, err = good.communicate(timeout=300)
    assert good.returncode == 0, err
    assert "Accuracy:" in out
    assert not os.path.exists(marker)


def test_server_logged_each_error_with_the_peer(server):
    errors = [l for l in server.log if "WARNING" in l]
    assert errors and all("127.0.0.1:" in l for l in errors)
