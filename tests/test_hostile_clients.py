"""Clients that say nothing, dribble a frame, or come in too many: cut off or refused, while a good edge is served.

The good edge runs the tests' tiny model (tests/fixtures/tiny_models.py) at split 4, a sample every 20 ms for
3 s, so it is still running while the hostile clients are dealt with."""
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from cloud_server import ServerProcess
from conftest import REPO, TINY_ID

from runtime.wire import codec, sockets


@pytest.fixture(scope="module")
def server(tiny_bundles):
    srv = ServerProcess(tiny_bundles, "--hello-timeout", "2", "--read-timeout", "3", "--max-connections", "4")
    yield srv
    assert srv.stop() == 0, srv.log_text()


def good_edge(server, artifacts):
    return subprocess.Popen([sys.executable, os.path.join(REPO, "cli.py"), "run-edge", "--cloud", server.address,
                             "--artifacts", str(artifacts), "--model", TINY_ID, "--split", "4", "--interval-ms", "20",
                             "--dataset", "synthetic", "--limit", "150"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def closed_after(sock, seconds):
    """Seconds until the server closes ``sock`` (reading past any ERROR frame), or None within ``seconds``."""
    sock.settimeout(seconds)
    started = time.time()
    try:
        while sock.recv(4096):
            pass
    except socket.timeout:
        return None
    except ConnectionResetError:
        pass
    return time.time() - started


def test_a_silent_connection_is_closed_while_a_good_edge_is_served(server, tiny_bundles):
    silent = socket.create_connection((server.host, server.port))
    edge = good_edge(server, tiny_bundles)
    took = closed_after(silent, 10)
    assert took is not None and took < 4  # --hello-timeout 2, checked every 0.2 s
    out, err = edge.communicate(timeout=300)
    assert edge.returncode == 0 and "Accuracy:" in out, err
    assert any("code=timeout reason=no_frame_within_2s" in l for l in server.log), server.log_text()


def test_a_client_sending_a_byte_a_second_is_cut_off_at_the_read_timeout(server, tiny_bundles):
    slow = socket.create_connection((server.host, server.port))
    frame = codec.HEADER.pack(codec.MAGIC, codec.VERSION, codec.HELLO, 0, 1, 2, 0, 0, 0) + b"{}"
    stop = threading.Event()

    def dribble():
        for byte in frame:
            if stop.is_set():
                return
            try:
                slow.send(bytes([byte]))
            except OSError:
                return
            time.sleep(1.0)
    sender = threading.Thread(target=dribble, daemon=True)
    started = time.time()
    sender.start()
    edge = good_edge(server, tiny_bundles)
    took = closed_after(slow, 15)
    stop.set()
    assert took is not None and 2.5 < time.time() - started < 6  # --read-timeout 3 from the first byte
    out, err = edge.communicate(timeout=300)
    assert edge.returncode == 0 and "Accuracy:" in out, err


def test_connections_beyond_the_cap_are_refused_in_one_error_and_served_again_later(server, tiny_bundles):
    held = []
    for _ in range(4):  # the cap, each kept alive by an ECHO so the hello timeout does not close it
        s = socket.create_connection((server.host, server.port))
        sockets.send_frame(s, codec.ECHO, 1, {}, np.zeros(8, np.uint8))
        assert sockets.FrameReader(s).read().type == codec.RESULT
        held.append(s)
    extra = socket.create_connection((server.host, server.port))
    extra.settimeout(10)
    frame = sockets.FrameReader(extra).read()
    assert frame.type == codec.ERROR and frame.meta["code"] == "busy" and "--max-connections" in frame.meta["message"]
    for s in held:
        s.close()
    time.sleep(0.6)  # the server notices the closes within its 0.2 s poll
    edge = good_edge(server, tiny_bundles)
    out, err = edge.communicate(timeout=300)
    assert edge.returncode == 0 and "Accuracy:" in out, err
    assert any("event=refused" in l and "reason=max_connections open=4" in l for l in server.log)
