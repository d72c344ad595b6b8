"""Frames round-trip through real sockets, tensors intact, whatever their size and dtype."""
import socket
import threading

import numpy as np
import pytest

from runtime.errors import UserError
from runtime.wire import codec, sockets


@pytest.mark.parametrize("dtype,shape", [("float32", (4, 2048, 1, 1)), ("float16", (2, 3, 5)), ("int8", (7,)),
                                         ("uint8", (1, 3, 32, 32)), ("int64", (3,)), ("float32", (0, 10))])
def test_tensor_frames_round_trip(dtype, shape):
    a, b = socket.socketpair()
    try:
        x = (np.random.RandomState(0).randn(*shape) * 50).astype(dtype)
        sent = sockets.send_frame(a, codec.INFER, 42, {"extra": "kept"}, x)
        frame = sockets.FrameReader(b).read()
        assert (frame.type, frame.request_id, frame.meta["extra"]) == (codec.INFER, 42, "kept")
        assert frame.array.dtype == np.dtype(dtype) and frame.array.shape == shape
        assert np.array_equal(frame.array, x)
        assert sent == codec.HEADER_SIZE + len(codec.encode_meta(frame.meta)) + x.nbytes
    finally:
        a.close()
        b.close()


def test_large_tensor_survives_partial_sends():
    a, b = socket.socketpair()
    x = np.random.RandomState(1).randn(4, 1024, 1024).astype(np.float32)  # 16 MiB, far above socket buffers
    received = {}
    reader = threading.Thread(target=lambda: received.update(f=sockets.FrameReader(b).read()))
    reader.start()
    sockets.send_frame(a, codec.RESULT, 1, {}, x[:, ::2])  # a non-contiguous view is sent correctly too
    reader.join(30)
    assert np.array_equal(received["f"].array, x[:, ::2])
    a.close()
    b.close()


def test_a_peer_closing_between_frames_is_not_an_error():
    a, b = socket.socketpair()
    a.close()
    with pytest.raises(codec.PeerClosed):
        sockets.FrameReader(b).read()
    b.close()


@pytest.mark.parametrize("text,expected", [("10.0.0.2:9999", ("10.0.0.2", 9999)), ("host", ("host", 9999)),
                                           ("[::1]:8000", ("::1", 8000))])
def test_parse_address(text, expected):
    assert sockets.parse_address(text) == expected


@pytest.mark.parametrize("text", ["host:port", "host:70000", ":9999"])
def test_parse_address_rejects(text):
    with pytest.raises(UserError, match="address"):
        sockets.parse_address(text)


def test_the_client_sends_nothing_the_state_table_refuses_and_takes_only_the_answers_it_names():
    from hand_cloud import EDGE_HELLO, connect, welcome
    conn, sock, reader = connect(3.0)
    try:
        with pytest.raises(codec.ProtocolError) as before_hello:
            conn.infer(np.zeros((1, 8), np.float32))
        assert before_hello.value.code == "no_hello"
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(1)  # refused before a byte was sent
        sock.setblocking(True)

        request_id, _ = conn.request(codec.HELLO, EDGE_HELLO)
        sockets.send_frame(sock, codec.CHALLENGE, reader.read().request_id, {})  # not what answers a HELLO
        with pytest.raises(codec.ProtocolError, match="expected WELCOME in answer to HELLO, got CHALLENGE"):
            conn.answer(codec.HELLO, EDGE_HELLO, request_id)
        assert not conn.state.bound

        welcome(conn, reader, sock)  # the answer the table names binds the connection
        assert conn.state.bound
    finally:
        conn.close()
        sock.close()
