"""Faults with nothing lost: the server SIGKILLed and restarted mid-run, SIGTERM drain, local fallback.

Real serve-cloud and run-edge processes over loopback, serving the tests' tiny model
(tests/fixtures/tiny_models.py) at split 4.  Every run labels 300 samples with the tests'
own torch copy of that model, so "every sample answered exactly once, correctly" is one
comparison of the report's predictions with the labels.  The edge releases a sample every
10 ms (--interval-ms), so a run lasts 3 s and the faults land in the middle of it.
"""
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from cloud_server import ServerProcess
from conftest import REPO, TINY_ID
from hand_cloud import connect, welcome

from runtime.edge.client import CloudConnection, CloudLost
from runtime.wire import codec

N = 300


@pytest.fixture(scope="module")
def artifacts(tiny_bundles):
    return tiny_bundles


@pytest.fixture(scope="module")
def labelled_npz(tiny_labelled_npz):
    return tiny_labelled_npz


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_edge(address, artifacts, labelled_npz, report, *args):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, os.path.join(REPO, "cli.py"), "run-edge", "--cloud", address, "--artifacts", str(artifacts),
         "--model", TINY_ID, "--split", "4", "--interval-ms", "10", "--dataset", "npz:" + labelled_npz[0],
         "--limit", str(N), "--report", str(report)]
        + [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


def wait_for_requests(server, at_least, edge, timeout=120):
    """Poll the server's STATUS until it has answered ``at_least`` requests (the edge is mid-run)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert edge.poll() is None, "the edge ended early: " + edge.communicate()[1]
        conn = CloudConnection(server.address, 10)
        try:
            if conn.status()["requests"] >= at_least:
                return
        finally:
            conn.close()
        time.sleep(0.2)
    raise AssertionError("the edge did not reach {} requests".format(at_least))


def kill_and_finish(server, edge, after, timeout):
    """SIGKILL the server once it has answered ``after`` requests, and nothing after it; the edge's (out, err)."""
    try:
        wait_for_requests(server, after, edge)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(30)
        return edge.communicate(timeout=timeout)
    finally:
        if edge.poll() is None:
            edge.kill()


def check_every_sample_once(report, labels):
    assert report["n"] == N
    assert report["predictions"] == labels[:N].tolist()  # one result per sample, in order, each correct


@pytest.mark.parametrize("inflight", [1, 4])
def test_sigkill_and_restart_mid_run_loses_and_repeats_nothing(artifacts, labelled_npz, tmp_path, inflight):
    port = free_port()
    server = ServerProcess(artifacts, "--port", port)
    report = tmp_path / "r.json"
    edge = start_edge(server.address, artifacts, labelled_npz, report, "--inflight", inflight,
                      "--reconnect-timeout", 60)
    try:
        wait_for_requests(server, 60, edge)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(30)
        time.sleep(1.5)  # the edge meets a dead port and backs off
        server = ServerProcess(artifacts, "--port", port)
        out, err = edge.communicate(timeout=300)
    finally:
        if edge.poll() is None:
            edge.kill()
        assert server.stop() == 0
    assert edge.returncode == 0, err
    r = json.loads(report.read_text())
    check_every_sample_once(r, labelled_npz[1])
    assert len(r["reconnects"]) == 1 and r["reconnects"][0]["attempts"] >= 2, r["reconnects"]
    assert set(r["served_by"]) == {"cloud"}
    assert "Reconnected after" in out
    # the restarted server answered the rest: the requests that had no reply were sent again
    assert "event=hello" in server.log_text()


def test_sigterm_drains_the_requests_in_flight_and_the_edge_finishes_on_the_next_server(artifacts, labelled_npz,
                                                                                          tmp_path):
    port = free_port()
    server = ServerProcess(artifacts, "--port", port)
    report = tmp_path / "r.json"
    edge = start_edge(server.address, artifacts, labelled_npz, report, "--inflight", 4)
    try:
        wait_for_requests(server, 60, edge)
        assert server.stop() == 0  # SIGTERM: answers what has arrived, says it is shutting down, exits 0
        first = server.log_text()
        server = ServerProcess(artifacts, "--port", port)
        out, err = edge.communicate(timeout=300)
    finally:
        if edge.poll() is None:
            edge.kill()
        assert server.stop() == 0
    assert edge.returncode == 0, err
    # the first server answered what had arrived, told the edge why, closed, and exited 0
    assert 'reason="server shutting down"' in first and "code=internal" not in first
    r = json.loads(report.read_text())
    check_every_sample_once(r, labelled_npz[1])
    assert r["reconnects"] and r["reconnects"][-1]["attempts"] >= 2  # the port was closed while it drained


def test_fallback_local_finishes_on_the_edge_when_the_cloud_stays_down(artifacts, labelled_npz, tmp_path):
    server = ServerProcess(artifacts)
    report = tmp_path / "r.json"
    edge = start_edge(server.address, artifacts, labelled_npz, report, "--inflight", 2, "--reconnect-timeout", 2,
                      "--fallback", "local")
    out, err = kill_and_finish(server, edge, 60, 300)
    assert edge.returncode == 0, err
    r = json.loads(report.read_text())
    check_every_sample_once(r, labelled_npz[1])
    local = r["served_by"].count("local")
    assert 0 < local < N and r["served_by"] == ["cloud"] * (N - local) + ["local"] * local
    assert r["local_samples"] == local and r["fallback"]["after_samples"] == N - local
    assert "Local fallback: {} samples".format(local) in out
    assert "running the remaining samples on the edge alone" in err


def test_without_fallback_a_cloud_that_stays_down_is_one_line_with_the_count(artifacts, labelled_npz, tmp_path):
    server = ServerProcess(artifacts)
    edge = start_edge(server.address, artifacts, labelled_npz, tmp_path / "r.json", "--reconnect-timeout", 1)
    out, err = kill_and_finish(server, edge, 30, 120)
    assert edge.returncode != 0
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "unreachable" in last and "of {} samples done".format(N) in last
    assert "--fallback local" in last


def test_fallback_local_without_the_full_model_is_refused_before_starting(labelled_npz, tmp_path):
    edge = start_edge("127.0.0.1:9", tmp_path, labelled_npz, tmp_path / "r.json", "--fallback", "local")
    out, err = edge.communicate(timeout=60)
    assert edge.returncode != 0 and "--fallback local needs the full model" in err.strip().splitlines()[-1]


def test_a_reset_while_the_edge_spins_for_its_reply_is_a_lost_cloud_not_a_crash():
    """The busy-poll wait (select, then non-blocking receives) meets the peer's RST: CloudLost, which
    run-edge reconnects from.  CI once saw the bare ConnectionResetError end a run here."""
    conn, peer, reader = connect(10, busy_poll=True)
    try:
        conn._expected_s = 5.0  # a reply is due in 5 s: the edge sleeps in select, and the RST wakes it
        welcome(conn, reader, peer)

        def reset_after_the_request():
            assert reader.read().type == codec.INFER
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            peer.close()  # linger 0: the close sends RST

        t = threading.Thread(target=reset_after_the_request)
        t.start()
        t0 = time.monotonic()
        with pytest.raises(CloudLost, match="lost the connection to the cloud .*reset"):
            conn.infer(np.zeros((1, 8), np.float32))
        assert time.monotonic() - t0 < 4  # woken by the reset, not by the 5 s estimate
        t.join(10)
    finally:
        conn.close()
