"""The cloud's side of a connection written by hand, for tests that need it to misbehave."""
import socket
import threading

from runtime.wire import codec, sockets

EDGE_HELLO = {"model": "m", "split": 1}


def connect(timeout, **options):
    """An edge's CloudConnection (``timeout``, ``options``) to a cloud written by hand, greeted as serve-cloud
    greets it (CHALLENGE, no token: wire/states.py): (the connection, the cloud's socket, a FrameReader of it)."""
    from runtime.edge.client import CloudConnection
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    cloud = {}

    def greet():  # the edge's constructor waits for the CHALLENGE: answered from here
        sock, _ = listener.accept()
        reader = sockets.FrameReader(sock)
        greeting = reader.read()
        sockets.send_frame(sock, codec.CHALLENGE, greeting.request_id, {"nonce": "0" * 32, "required": False})
        cloud.update(sock=sock, reader=reader, greeting=greeting)

    greeter = threading.Thread(target=greet, daemon=True)
    greeter.start()
    try:
        conn = CloudConnection("127.0.0.1:{}".format(listener.getsockname()[1]), timeout, **options)
    finally:
        greeter.join(timeout)
        listener.close()
    assert cloud["greeting"].type == codec.AUTH and cloud["greeting"].meta == {}, "the greeting: AUTH without a proof"
    return conn, cloud["sock"], cloud["reader"]


def welcome(conn, reader, sock):
    """Bind the edge's CloudConnection ``conn``, as serve-cloud would: its HELLO is read from ``reader`` and
    answered with a WELCOME on ``sock`` (the client sends no INFER before one: wire/states.py)."""
    request_id, _ = conn.request(codec.HELLO, EDGE_HELLO)
    hello = reader.read()
    assert hello.type == codec.HELLO
    sockets.send_frame(sock, codec.WELCOME, hello.request_id, {"bundle_id": "b"})
    conn.answer(codec.HELLO, EDGE_HELLO, request_id)
