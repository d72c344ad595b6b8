"""The load check (bench/load.py), small: 8 edges x 50 requests against one real serve-cloud.

Every edge is a process of its own with its own TCP connection speaking the real protocol;
every reply is checked against the tail's output computed in that process.  A third test puts a
faulty proxy (real sockets, real frames) between the edges and the server, to show that a
corrupted, a duplicated and a dropped reply are each caught and counted.
"""
import os
import struct
import sys
import threading

import pytest
from conftest import REPO
from slow_proxy import LoopbackProxy

sys.path.insert(0, os.path.join(REPO, "bench"))
import load  # noqa: E402  (bench/load.py)

EDGES, REQUESTS, SPLIT = 8, 50, 20
MAX_GROWTH_MIB = 200.0


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store holding the random-weight bundle of split 20 (exported as bench/load.py does)."""
    return load.prepare(str(tmp_path_factory.mktemp("load")), SPLIT)


def _assert_clean(result):
    assert result["errors"] == []
    assert result["answered"] == result["requests"] == EDGES * REQUESTS
    assert (result["lost"], result["mismatched"], result["duplicated"]) == (0, 0, 0)
    assert result["out_of_order"] == 0 and result["reconnects"] == 0
    assert result["warmup_ok"] == result["warmup_requests"] == EDGES
    assert result["server_summary"]["requests"] == EDGES * REQUESTS + EDGES
    assert result["server_summary"]["connections"] == EDGES
    assert result["server_summary"]["errors"] == "none"
    assert len(result["latencies_ms"]) == EDGES * REQUESTS
    growth = result["rss_mib"]["growth"]
    assert growth is not None and growth < MAX_GROWTH_MIB
    assert result["rss_mib"]["peak"] - result["rss_mib"]["start"] < MAX_GROWTH_MIB
    assert load.verdict(result, MAX_GROWTH_MIB) == []


@pytest.mark.parametrize("server_args", [(), ("--max-batch", "8", "--max-delay-ms", "2")],
                         ids=["plain", "batching"])
def test_concurrent_edges_get_their_own_replies(store, server_args, tmp_path):
    result = load.run_load(store, SPLIT, EDGES, REQUESTS, server_args, timeout=20.0, show_progress=False,
                           deadline_s=120.0)
    _assert_clean(result)
    load.write_outputs(result, str(tmp_path))  # the outputs are written and readable
    assert {"load.json", "load.csv", "load.png"} <= set(os.listdir(str(tmp_path)))
    assert "| lost | 0 |" in load.format_table(result)


HEADER = struct.Struct("<4sBBHQIQII")  # docs/PROTOCOL.md
RESULT = 4


class FaultyProxy(LoopbackProxy):
    """Forwards edge -> cloud bytes as they are; parses cloud -> edge frames and, counting RESULT
    frames across all connections, corrupts the ``corrupt``-th one's first value, sends the
    ``duplicate``-th twice and drops the ``drop``-th."""

    def __init__(self, target, corrupt, duplicate, drop):
        host, port = target.rsplit(":", 1)
        self.faults = {corrupt: "corrupt", duplicate: "duplicate", drop: "drop"}
        self.results = 0
        self.done = []
        self._lock = threading.Lock()
        LoopbackProxy.__init__(self, host, int(port), backlog=64)

    def _connect(self, client, upstream):
        threading.Thread(target=self._forward, args=(client, upstream), daemon=True).start()
        threading.Thread(target=self._frames, args=(upstream, client), daemon=True).start()

    def _forward(self, src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        self._close(src, dst)

    @staticmethod
    def _exactly(sock, n):
        buf = bytearray()
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise EOFError()
            buf += chunk
        return bytes(buf)

    def _frames(self, src, dst):
        try:
            while True:
                header = self._exactly(src, HEADER.size)
                fields = HEADER.unpack(header)
                type_, meta_len, payload_len = fields[2], fields[5], fields[6]
                body = bytearray(self._exactly(src, meta_len + payload_len))
                fault = None
                if type_ == RESULT:
                    with self._lock:
                        self.results += 1
                        fault = self.faults.get(self.results)
                        if fault:
                            self.done.append(fault)
                if fault == "corrupt":
                    body[meta_len:meta_len + 4] = struct.pack("<f", 1000.0)
                if fault == "drop":
                    continue
                dst.sendall(header + bytes(body))
                if fault == "duplicate":
                    dst.sendall(header + bytes(body))
        except (OSError, EOFError):
            pass
        self._close(src, dst)


def test_the_checks_catch_a_corrupted_a_duplicated_and_a_lost_reply(store):
    proxies = []

    def via(address):
        # results 1..8 are the warm-ups (all answered before the load starts); these come later
        proxies.append(FaultyProxy(address, corrupt=40, duplicate=80, drop=120))
        return proxies[0].address

    try:
        result = load.run_load(store, SPLIT, EDGES, REQUESTS, timeout=2.0, show_progress=False, deadline_s=120.0,
                               via=via)
    finally:
        for proxy in proxies:
            proxy.close()
    assert sorted(proxies[0].done) == ["corrupt", "drop", "duplicate"]
    assert (result["mismatched"], result["duplicated"], result["lost"]) == (1, 1, 1)
    assert result["answered"] == EDGES * REQUESTS - 1
    assert result["reconnects"] == 1  # the edge whose reply was dropped timed out, reconnected, went on
    assert len(result["errors"]) == 3
    assert any("max |diff|" in e for e in result["errors"])
    assert any("duplicate RESULT" in e for e in result["errors"])
    assert any("in flight lost" in e for e in result["errors"])
    failed = load.verdict(result, MAX_GROWTH_MIB)
    assert "1 lost replies" in failed and "1 mismatched replies" in failed and "1 duplicated replies" in failed
