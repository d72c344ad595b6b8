"""run-edge at a camera's cadence: release times, the wait behind late requests, --start-at."""
import json
import time

import pytest

from runtime.edge.cadence import Cadence


class FakeClock(object):
    def __init__(self, wall=1000.0):
        self.t, self.wall0 = 0.0, wall

    def __call__(self):
        return self.t

    def wall(self):
        return self.wall0 + self.t

    def sleep(self, s):
        self.t += s


def test_back_to_back_has_no_release_and_no_wait():
    clock = FakeClock()
    c = Cadence(0, clock=clock, wall=clock.wall)
    assert c.start(sleep=clock.sleep) == 0.0
    assert c.release(5) is None and c.due_in(5) == 0.0


def test_releases_every_interval_from_the_start():
    clock = FakeClock()
    clock.t = 3.0
    c = Cadence(100, clock=clock, wall=clock.wall)
    c.start(sleep=clock.sleep)
    assert c.started == 3.0 and c.started_unix == 1003.0
    assert [c.release(i) for i in range(3)] == [3.0, 3.1, 3.2]
    clock.t = 3.15
    assert c.due_in(1) == 0.0 and c.due_in(2) == pytest.approx(0.05)


def test_start_at_waits_for_the_wall_clock_and_a_past_start_begins_at_once():
    clock = FakeClock(wall=1000.0)
    c = Cadence(50, start_at=1002.5, clock=clock, wall=clock.wall)
    assert c.start(sleep=clock.sleep) == pytest.approx(2.5)
    assert c.started_unix == pytest.approx(1002.5)
    late = Cadence(50, start_at=990.0, clock=clock, wall=clock.wall)
    assert late.start(sleep=clock.sleep) == 0.0


def test_negative_interval_is_refused():
    with pytest.raises(ValueError):
        Cadence(-1)


def test_run_edge_releases_at_the_cadence_and_counts_the_wait(seed_bundles, labelled_npz, tmp_path):
    """A real run: 200 ms between releases is longer than a request here, so none waits and releases are
    200 ms apart from --start-at; at 1 ms every request after the first waits for the one before."""
    from cloud_server import ServerProcess
    from conftest import run_cli
    data = labelled_npz[0]
    artifacts = seed_bundles[0]
    server = ServerProcess(artifacts)
    try:
        slow, fast = tmp_path / "slow.json", tmp_path / "fast.json"
        start_at = time.time() + 3.0
        proc = run_cli("run-edge", "--cloud", server.address, "--artifacts", artifacts, "--split", 20,
                       "--dataset", "npz:" + data, "--limit", 6, "--interval-ms", 200, "--start-at", repr(start_at),
                       "--report", slow)
        assert proc.returncode == 0, proc.stderr
        assert "Wait" in proc.stdout and "From release" in proc.stdout and "Released every 200 ms" in proc.stdout
        r = json.loads(slow.read_text())
        assert abs(r["started_unix"] - start_at) < 0.2, (r["started_unix"], start_at)
        release = r["timeline"]["release_s"]
        assert release == pytest.approx([0.2 * i for i in range(6)], abs=0.01)
        assert max(r["timeline"]["wait_ms"]) < 20 and r["timeline"]["split"] == [20] * 6
        assert r["wall_s"] >= 1.0
        assert all(f > w for f, w in zip(r["timeline"]["from_release_ms"], r["timeline"]["wait_ms"]))
        proc = run_cli("run-edge", "--cloud", server.address, "--artifacts", artifacts, "--split", 20,
                       "--dataset", "npz:" + data, "--limit", 6, "--interval-ms", 1, "--report", fast)
        assert proc.returncode == 0, proc.stderr
        r = json.loads(fast.read_text())
        waits = r["timeline"]["wait_ms"]
        assert waits[0] < 1 and all(w > 1 for w in waits[1:]), waits  # each waited for the one before
        assert r["from_release_ms"]["mean"] > r["end_to_end_ms"]["mean"]
        assert r["predictions"] == labelled_npz[1][:6].tolist()
    finally:
        server.stop()
