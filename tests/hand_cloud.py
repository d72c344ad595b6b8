"""The cloud's side of a connection written by hand, for tests that need it to misbehave."""
from runtime.wire import codec, sockets

EDGE_HELLO = {"model": "m", "split": 1}


def welcome(conn, reader, sock):
    """Bind the edge's CloudConnection ``conn``, as serve-cloud would: its HELLO is read from ``reader`` and
    answered with a WELCOME on ``sock`` (the client sends no INFER before one: wire/states.py)."""
    request_id, _ = conn.request(codec.HELLO, EDGE_HELLO)
    hello = reader.read()
    assert hello.type == codec.HELLO
    sockets.send_frame(sock, codec.WELCOME, hello.request_id, {"bundle_id": "b"})
    conn.answer(codec.HELLO, EDGE_HELLO, request_id)
