"""The benchmark's reference implementations (bench/seed_style.py, bench/raw_floor.py), over real sockets."""
import os
import socket
import struct
import sys
import threading

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

import raw_floor  # noqa: E402
import seed_style  # noqa: E402


def test_seed_style_split20_agrees_with_unsplit_model(seed_weights):
    import torch
    server = seed_style.make_server("127.0.0.1", 0, weights=seed_weights, random_init=False, threads=1)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        samples = seed_style.synthetic_samples(5)
        result = seed_style.run_edge(server.server_address[:2], 20, samples, weights=seed_weights,
                                     random_init=False, warmup=1, return_logits=True)
    finally:
        server.shutdown()
        server.server_close()
    traced = seed_style.build_traced(weights=seed_weights, random_init=False)
    with torch.no_grad():
        expected = traced.model(torch.from_numpy(samples)).numpy()
    np.testing.assert_allclose(np.stack(result["logits"]), expected, rtol=1e-3, atol=1e-4)
    assert result["predictions"] == expected.argmax(axis=1).tolist()
    assert len(result["edge_ms"]) == len(result["transmission_ms"]) == len(result["cloud_ms"]) == 5
    assert result["warmup_requests"] == 1 and result["cloud_totals"]["requests"] == 6
    assert 2048 * 4 < result["bytes_per_sample"] < 2048 * 4 + 1024  # a pickled 1x2048x1x1 float32 tensor


@pytest.mark.parametrize("process", [False, True])
def test_raw_floor_echoes_exact_sizes(process):
    with raw_floor.start_server(process=process) as server:
        with socket.create_connection(server.address, timeout=10) as sock:
            for up, down in ((0, 1), (70000, 3), (5, 200000)):
                sock.sendall(struct.pack("!QQQ", up, down, 0) + b"x" * up)
                reply = bytearray()
                while len(reply) < down:
                    chunk = sock.recv(down - len(reply))
                    assert chunk
                    reply += chunk
                assert bytes(reply) == bytes(down)
            sock.settimeout(0.2)  # and not one byte more
            with pytest.raises(socket.timeout):
                sock.recv(1)
        times = raw_floor.measure(server.address, 8192 + 70, 400, n=20, warmup=2)
    assert len(times) == 20 and all(np.isfinite(times)) and min(times) > 0
