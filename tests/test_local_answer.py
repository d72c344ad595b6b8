"""A local answer as a first-class choice: ``run-edge --split local``, deadline hedging (``--deadline-ms``),
stale frames (``--max-age-ms``, ``--stale``), adaptive mode at local, and an explicit ``--split`` that is never
switched away from (the policy's decisions, with their times given: tests/test_hedge_policy.py).

The runs are real ``run-edge`` processes against a real ``serve-cloud``, on the tests' tiny model.  The stalled link is a proxy that holds the cloud's replies
while its gate is shut, and the test shuts it and opens it on what the edge has done (the predictions it has
printed), not on the clock: so "every frame answered while no reply could come" is causal.
"""
import json
import os
import subprocess
import sys

import pytest
from cloud_server import ServerProcess
from conftest import REPO, SEED_REPORT, TINY_ID, run_cli, tiny_bundle
from slow_proxy import GateProxy, answer_through_a_stall

from runtime.edge.adaptive import LOAD_MS

# ---------------------------------------------------------------- real runs

N = 300


def _edge(*args):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, os.path.join(REPO, "cli.py"), "run-edge", "--model", TINY_ID]
                            + [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=REPO)


def _full_model_cache(tiny_bundles, tmp_path):
    """An edge cache holding only the whole model (split 7 of the tiny model: its tail is empty)."""
    import shutil
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copytree(str(tiny_bundle(tiny_bundles, 7)), str(cache / tiny_bundle(tiny_bundles, 7).name))
    return cache


def test_split_local_runs_with_no_cloud_at_all_and_reports_the_seeds_figures(tiny_bundles, tiny_labelled_npz,
                                                                              tmp_path):
    data, labels = tiny_labelled_npz
    report = tmp_path / "r.json"
    proc = run_cli("run-edge", "--split", "local", "--model", TINY_ID, "--cache",
                   _full_model_cache(tiny_bundles, tmp_path), "--dataset", "npz:" + data, "--limit", 50,
                   "--report", report)
    assert proc.returncode == 0, proc.stderr
    assert SEED_REPORT.match(proc.stdout) and proc.stdout.startswith("Accuracy: 100.00%\n")
    assert "Avg transmission latency: 0.000 ms\nAvg cloud inference latency: 0.000 ms" in proc.stdout
    r = json.loads(report.read_text())
    assert r["split"] == "local" and r["predictions"] == labels[:50].tolist()
    assert set(r["timeline"]["split"]) == {"local"} and r["paths"]["local"]["requests"] == 50
    assert r["bytes_sent_per_sample"] == 0


def test_split_local_without_the_whole_model_says_how_to_get_it(tmp_path):
    proc = run_cli("run-edge", "--split", "local", "--model", TINY_ID, "--cache", tmp_path / "empty",
                   "--dataset", "synthetic")
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and "--split local needs the full model" in last and "run-edge --split" in last
    assert not (tmp_path / "empty").exists() or os.listdir(str(tmp_path / "empty")) == []


def test_without_split_local_a_cloud_is_needed(tmp_path):
    proc = run_cli("run-edge", "--split", "4", "--model", TINY_ID, "--dataset", "synthetic")
    assert proc.returncode != 0 and "give --cloud" in proc.stderr and "--split local" in proc.stderr


@pytest.mark.parametrize("extra, words", [
    (["--split", "local", "--deadline-ms", "50"], "--split local sends none"),
    (["--split", "4", "--cloud", "127.0.0.1:9", "--max-age-ms", "50"], "give --interval-ms"),
    (["--split", "4", "--cloud", "127.0.0.1:9", "--deadline-ms", "50", "--inflight", "2"], "drop --inflight"),
    (["--split", "4", "--cloud", "grpc://127.0.0.1:9", "--deadline-ms", "50"], "need serve-cloud"),
    (["--split", "4", "--cloud", "127.0.0.1:9", "--follow", "--no-follow"], "contradict"),
    (["--split", "4", "--cloud", "127.0.0.1:9", "--reprofile"], "by itself when the run shows it stale"),
])
def test_hedging_refuses_what_it_cannot_do_before_connecting(extra, words):
    proc = run_cli("run-edge", "--model", TINY_ID, "--dataset", "synthetic", *extra)
    assert proc.returncode != 0 and words in proc.stderr.strip().splitlines()[-1]


@pytest.fixture()
def gated_cloud(tiny_bundles):
    srv = ServerProcess(tiny_bundles)
    host, port = srv.address.rsplit(":", 1)
    proxy = GateProxy(host, int(port))
    yield srv, proxy
    proxy.open()
    proxy.close()
    assert srv.stop() == 0


def test_while_the_link_holds_every_reply_every_frame_is_still_answered_on_the_edge(gated_cloud, tiny_bundles,
                                                                                   tiny_labelled_npz, tmp_path):
    """The gate shuts after 50 answers; while it is shut the edge must go on answering (it prints each
    prediction with --verbose), so the test opens it only after 40 more: without hedging it would wait forever.
    Then the late reply comes through, is discarded, and the rest go to the cloud again."""
    srv, proxy = gated_cloud
    data, labels = tiny_labelled_npz
    report = tmp_path / "r.json"
    edge = _edge("--cloud", proxy.address, "--split", 4, "--cache", _full_model_cache(tiny_bundles, tmp_path),
                 "--interval-ms", 10, "--deadline-ms", 100, "--dataset", "npz:" + data, "--limit", N,
                 "--verbose", "--report", report, "--timeout", 60)
    printed, stderr, held = answer_through_a_stall(edge, proxy, 50, 90)
    assert held >= 1  # a reply did come to the shut gate, and waited there
    assert edge.returncode == 0, "".join(stderr)
    r = json.loads(report.read_text())
    assert r["n"] == N and r["predictions"] == labels[:N].tolist()  # every frame once, the unsplit model's answer
    paths = r["paths"]
    # the 40 frames answered while the gate was shut came from the edge: one request finished here after waiting,
    # the rest never sent while the link owed its reply (a reply already past the gate may have made it one more)
    assert paths["hedged"]["requests"] >= 1 and paths["local"]["reasons"].get("link_busy", 0) >= 38
    assert r["late_replies"] >= 1  # the held reply, read once the gate opened, and discarded
    assert paths["cloud"]["requests"] > 50  # after it, the cloud answered again on the same connection
    assert r["reconnects"] == []
    assert "Late replies discarded: {}\n".format(r["late_replies"]) in "".join(printed)


def test_stale_frames_are_dropped_and_counted(tiny_bundles, tiny_labelled_npz, tmp_path):
    """A max age of 1 us: a frame that starts any later than its release (a sleep always overshoots by more) is
    stale, and with --stale drop it is dropped; every frame is accounted for as answered or dropped."""
    srv = ServerProcess(tiny_bundles)
    data, labels = tiny_labelled_npz
    report = tmp_path / "r.json"
    try:
        proc = run_cli("run-edge", "--cloud", srv.address, "--model", TINY_ID, "--split", 4, "--cache",
                       tmp_path / "cache", "--interval-ms", 2, "--max-age-ms", 0.001, "--stale", "drop",
                       "--dataset", "npz:" + data, "--limit", 100, "--report", report)
    finally:
        assert srv.stop() == 0
    assert proc.returncode == 0, proc.stderr
    r = json.loads(report.read_text())
    assert r["dropped"] >= 1 and r["n"] + r["dropped"] == 100
    kept = [i for i in range(100) if i not in set(r["dropped_samples"])]
    assert r["predictions"] == labels[kept].tolist()
    assert "Dropped as stale: {} samples".format(r["dropped"]) in proc.stdout
    # no whole model in the edge's cache: the tail of split 4 was fetched beside its head, to finish late requests
    assert {"head.onnx", "tail.onnx"} <= set(os.listdir(str(tmp_path / "cache" / tiny_bundle(tiny_bundles, 4).name)))
    assert "fetching the tail of" in proc.stderr


def test_an_explicit_split_is_kept_when_the_cloud_activates_another(tiny_bundles, tiny_labelled_npz, tmp_path):
    """The cloud's active bundle is split 4; --split 1 runs split 1 (no switch), --follow switches to 4."""
    srv = ServerProcess(tmp_path / "store", "--allow-push", "--admin-token", "t" * 32)
    data, _ = tiny_labelled_npz
    try:
        for split, extra in ((1, []), (4, ["--activate"])):
            assert run_cli("push", tiny_bundle(tiny_bundles, split), "--cloud", srv.address, "--admin-token",
                           "t" * 32, *extra).returncode == 0
        runs = {}
        for name, extra in (("kept", []), ("followed", ["--follow"])):
            report = tmp_path / "{}.json".format(name)
            proc = run_cli("run-edge", "--cloud", srv.address, "--model", TINY_ID, "--split", 1, "--cache",
                           tmp_path / "cache", "--dataset", "npz:" + data, "--limit", 20, "--report", report, *extra)
            assert proc.returncode == 0, proc.stderr
            runs[name] = json.loads(report.read_text())
    finally:
        assert srv.stop() == 0
    assert runs["kept"]["switches"] == [] and set(runs["kept"]["timeline"]["split"]) == {1}
    assert [(s["from_split"], s["to_split"]) for s in runs["followed"]["switches"]] == [(1, 4)]


def test_adaptive_mode_starts_local_where_the_whole_model_here_is_fastest(tiny_bundles, tiny_labelled_npz, tmp_path):
    """The tiny model's whole forward pass is tens of microseconds here, less than any round trip: the plan
    chooses local, adaptive mode starts there (its connection kept for probes and the way back) and every frame
    is answered here, correctly."""
    srv = ServerProcess(tiny_bundles)
    data, labels = tiny_labelled_npz
    report = tmp_path / "r.json"
    try:
        proc = run_cli("run-edge", "--cloud", srv.address, "--model", TINY_ID, "--split", "auto", "--adaptive",
                       "--cache", _full_model_cache(tiny_bundles, tmp_path), "--interval-ms", 5, "--dataset",
                       "npz:" + data, "--limit", 100, "--report", report)
    finally:
        assert srv.stop() == 0
    assert proc.returncode == 0, proc.stderr
    r = json.loads(report.read_text())
    assert r["plan"]["choice"]["split"] == "local" and r["predictions"] == labels[:100].tolist()
    # nothing was sent, so no link sample could make another split look better: it stayed
    assert r["paths"] == {"local": dict(r["paths"]["local"], requests=100, reasons={"adaptive": 100})}
    assert set(r["timeline"]["split"]) == {"local"} and r["switches"] == [] and r["bytes_sent_per_sample"] == 0
    # the head of the split its connection is bound to was loaded and timed: a switch's cost is this edge's own
    # figure, not the assumed one (a real load never takes exactly LOAD_MS)
    assert r["head_load_ms"] > 0 and r["head_load_ms"] != LOAD_MS


def test_at_local_a_probe_that_meets_a_stalled_link_holds_up_no_frame(gated_cloud, tiny_bundles, tiny_labelled_npz,
                                                                        tmp_path):
    """Adaptive mode at local probes the link now and then (every 2 s without a sample).  The gate shuts after
    20 answers and opens only once all 400 are printed: a probe sent meanwhile cannot come back before the run
    has answered every frame, so the run ends only if the frames never waited for it."""
    srv, proxy = gated_cloud
    data, labels = tiny_labelled_npz
    report = tmp_path / "r.json"
    edge = _edge("--cloud", proxy.address, "--split", "auto", "--adaptive", "--cache",
                 _full_model_cache(tiny_bundles, tmp_path), "--interval-ms", 10, "--dataset", "npz:" + data,
                 "--limit", 400, "--verbose", "--report", report)
    _, stderr, _ = answer_through_a_stall(edge, proxy, 20, 400)
    assert edge.returncode == 0, "".join(stderr)
    r = json.loads(report.read_text())
    assert r["predictions"] == labels[:400].tolist() and set(r["timeline"]["split"]) == {"local"}
    assert r["probes"] >= 1  # sent while the gate was shut (the run lasts 4 s; the first probe comes after 2)


class _OneConnection(object):
    """What a HedgedPipe asks of its session, around one real connection; a reconnect fails (the link stays
    stalled), so the pipe's background reconnect gives the cloud up."""

    def __init__(self, conn):
        self.conn, self.cloud = conn, conn.address

    def reconnect(self, give_up_at, reason):
        from runtime.edge.client import CloudLost
        self.conn.close()
        raise CloudLost("still stalled: " + reason)


def test_a_send_into_a_stalled_link_ends_at_its_give_up_not_the_connections_timeout(gated_cloud, tiny_bundles):
    """A request larger than every socket buffer on the way (64 MiB less a header, against a few MiB of kernel
    buffers on loopback) cannot be sent while the proxy reads none of it: without a bound the send would block
    for the connection's timeout (60 s here).  The hedged pipe bounds it by the request's give-up (200 ms from
    release, at least SEND_STALL_S), drops the connection (part of a frame is on it) and answers here."""
    import time

    import numpy as np

    from runtime.backends import load_part
    from runtime.bundle.manifest import load_manifest
    from runtime.edge.client import CloudConnection
    from runtime.edge.hedge import HedgedPipe, HedgePolicy
    from runtime.edge.local import LocalModel
    from runtime.edge.measure import Sent
    srv, proxy = gated_cloud
    manifest = load_manifest(str(tiny_bundle(tiny_bundles, 4)))
    conn = CloudConnection(proxy.address, timeout=60)
    conn.hello({"role": "edge", "model": TINY_ID, "split": None, "bundle_id": manifest.bundle_id})
    local = LocalModel()
    local.add_tail(manifest.bundle_id, load_part(manifest, "tail", threads=1))
    x = np.random.RandomState(0).rand(1, 3, 16, 16).astype(np.float32)
    boundary = load_part(manifest, "head", threads=1).run(x)
    pipe = HedgedPipe(_OneConnection(conn), HedgePolicy(deadline_ms=200), local)
    proxy.shut(upstream=True)
    released = time.perf_counter()
    context = Sent([0], 0.0, manifest.bundle_id, 0.0, 0.0, 4, released, x, boundary)
    pipe.send(np.zeros(16 * 1024 * 1024 - 1024, dtype=np.float32), {}, context)
    took_s = time.perf_counter() - released
    answer = pipe.next()[0]
    assert (answer.path, answer.reason) == ("local", "outage")
    np.testing.assert_allclose(answer.array, local.tails[manifest.bundle_id].run(boundary))
    # the give-up is 0.2 s after release; 30 s is half the connection's timeout, room for a loaded machine
    assert took_s < 30.0
    pipe.outage.join(timeout=60)
    assert pipe.gone and "still stalled" in pipe.gone
