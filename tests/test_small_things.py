"""Small things a user sees (issue 32, item 8): each test runs the user's command, with real `cli.py` and
serve-cloud processes on the tiny model's bundles, and reads what it now prints."""
import json
import shutil

import pytest
from cloud_server import ServerProcess
from conftest import TINY_ID, run_cli

TOKEN = "test-admin-token"


@pytest.fixture(scope="module")
def server(tiny_bundles):
    srv = ServerProcess(tiny_bundles)
    yield srv
    assert srv.stop() == 0, srv.log_text()


def run_edge(srv, cache, *args):
    return run_cli("run-edge", "--cloud", srv.address, "--cache", cache, "--model", TINY_ID, *args)


def test_a_segments_bundle_is_logged_by_name_not_as_split_none(tiny_bundles, tmp_path):
    segments = "{}-segments".format(TINY_ID)
    srv = ServerProcess(tiny_bundles)
    assert srv.stop() == 0, srv.log_text()
    log = srv.log_text()
    assert "sNone" not in log and "{} (".format(segments) in log, log  # the store's listing at start
    (tmp_path / "store").mkdir()
    pushed = ServerProcess(tmp_path / "store", "--allow-push", "--admin-token", TOKEN)
    try:
        proc = run_cli("push", tiny_bundles / segments, "--cloud", pushed.address, "--admin-token", TOKEN)
        assert proc.returncode == 0, proc.stderr
    finally:
        assert pushed.stop() == 0, pushed.log_text()
    log = pushed.log_text()
    assert "sNone" not in log and "({})".format(segments) in log, log  # the push's line


def test_split_0_says_there_is_no_head_to_fetch(server, tiny_labelled_npz, tmp_path):
    proc = run_edge(server, tmp_path / "cache", "--split", 0, "--dataset", "npz:" + tiny_labelled_npz[0],
                    "--limit", 8)
    assert proc.returncode == 0, proc.stderr
    assert "MiB" not in proc.stderr and "fetched and verified" not in proc.stderr, proc.stderr
    assert "run-edge: split 0 has no head (the whole model runs on the cloud): nothing to fetch" in proc.stderr
    assert "Transmission includes queueing" not in proc.stdout  # --inflight 1: nothing queues


def test_random_weights_and_inflight_queueing_are_said_on_the_console(server, tiny_labelled_npz, tmp_path):
    report = tmp_path / "r.json"
    proc = run_edge(server, tmp_path / "cache", "--split", 4, "--dataset", "npz:" + tiny_labelled_npz[0],
                    "--limit", 16, "--inflight", 2, "--report", report)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(report.read_text())["random_init"] is True  # the tiny bundles are exported with --random-init
    lines = proc.stdout.splitlines()
    assert lines.count("Weights: random (the bundle was exported with --random-init): accuracy is at chance "
                       "level") == 1, proc.stdout
    assert ("Transmission includes queueing: with --inflight 2 a request also waits behind the 1 sent before it"
            in lines), proc.stdout
    assert lines[0].startswith("Accuracy: "), proc.stdout  # the seed's lines still come first


def test_sweep_says_its_lines_as_sweep(server, tmp_path):
    proc = run_cli("sweep", "--cloud", server.address, "--model", TINY_ID, "--cache", tmp_path / "cache",
                   "--splits", "0,4", "--dataset", "synthetic", "--limit", 8, "--power", "none",
                   "--csv", tmp_path / "s.csv")
    assert proc.returncode == 0, proc.stderr
    said = proc.stderr.splitlines()
    assert any(l.startswith("sweep: fetching the head of ") for l in said), proc.stderr  # the session's line
    assert not [l for l in said if l.split(":")[0] in ("run-edge", "plan", "model")], proc.stderr


def active_bundles(srv):
    proc = run_cli("status", "--cloud", srv.address)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["active_bundles"]


def test_the_active_bundle_survives_a_restart_of_serve_cloud(tiny_bundles, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    src = tiny_bundles / "{}-s4".format(TINY_ID)
    wanted = json.loads((src / "manifest.json").read_text())["bundle_id"]
    srv = ServerProcess(store, "--allow-push", "--admin-token", TOKEN)
    try:
        proc = run_cli("push", src, "--cloud", srv.address, "--admin-token", TOKEN, "--activate")
        assert proc.returncode == 0, proc.stderr
        assert active_bundles(srv) == {TINY_ID: wanted}
    finally:
        assert srv.stop() == 0, srv.log_text()
    again = ServerProcess(store)  # the same store: the activation was recorded there
    try:
        assert active_bundles(again) == {TINY_ID: wanted}
    finally:
        assert again.stop() == 0, again.log_text()
    shutil.rmtree(str(store / src.name))  # a bundle no longer there is not active after the next restart
    third = ServerProcess(store)
    try:
        assert active_bundles(third) == {}
    finally:
        assert third.stop() == 0, third.log_text()
    assert "which the store no longer holds: none is active" in third.log_text()
