"""Profiles, the network probe, the planner, plan/profile/sweep and --split auto, on real processes."""
import csv
import json
import os

import pytest
from cloud_server import ServerProcess
from conftest import TINY, TINY_ID, run_cli

from exporter.bundle import export_bundle
from exporter.options import ExportOptions
from runtime.backends.profiling import ProfileCache, profile_segments
from runtime.bundle.manifest import load_manifest
from runtime.edge.planner import predict

MODEL, MODEL_ID = TINY, TINY_ID


@pytest.fixture(scope="module")
def store(tiny_bundles):
    """A cloud store with every split and the segments of a model whose graph is not a chain (a skip connection)."""
    return tiny_bundles, load_manifest(str(tiny_bundles / (TINY_ID + "-segments")))


def test_segments_profile_and_its_cache(store, tmp_path):
    _, segments = store
    assert segments.kind == "segments" and len(segments["segments"]) == len(segments["points"]) - 1
    profile = profile_segments(segments, "onnx", "cpu", batch_size=2, runs=5, warmup=1)
    assert len(profile["segment_ms"]) == len(segments["segments"]) and all(t > 0 for t in profile["segment_ms"])
    assert profile["key"]["provider"] == "CPUExecutionProvider" and profile["key"]["batch_size"] == 2
    cache = ProfileCache(str(tmp_path))
    assert cache.get(profile["key"]) is None
    cache.put(profile)
    assert cache.get(profile["key"]) == profile
    rows = predict(profile["points"], profile["segment_ms"], profile["segment_ms"], 0.1, 100.0)
    assert [r["split"] for r in rows] == list(range(len(profile["points"])))


@pytest.fixture(scope="module")
def server(store):
    srv = ServerProcess(store[0])
    yield srv
    assert srv.stop() == 0, srv.log_text()


def test_plan_measures_both_sides_and_the_network(server, tmp_path):
    proc = run_cli("plan", "--cloud", server.address, "--model", MODEL_ID, "--cache", tmp_path, "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["network"]["source"] == "probe" and plan["network"]["bandwidth_mbps"] > 10
    assert plan["choice"] == min(plan["rows"], key=lambda r: (r["latency_ms"], r["split"]))
    slow = json.loads(run_cli("plan", "--cloud", server.address, "--model", MODEL_ID, "--cache", tmp_path,
                              "--bandwidth", "0.01", "--rtt", "5", "--json").stdout)
    assert slow["network"]["source"] == "given"
    assert slow["choice"]["split"] == len(slow["rows"]) - 1  # 10 kbit/s: send the 10 logits, not a feature map
    assert "profiling" not in run_cli("plan", "--cloud", server.address, "--model", MODEL_ID, "--cache",
                                      tmp_path).stderr  # the edge profile came from the cache


def test_profile_writes_json_that_plan_reuses(server, store, tmp_path):
    out = tmp_path / "edge.json"
    proc = run_cli("profile", "--segments", os.path.join(str(store[0]), MODEL_ID + "-segments"), "--out", out)
    assert proc.returncode == 0, proc.stderr
    profile = json.loads(out.read_text())
    assert len(profile["segment_ms"]) == len(profile["points"]) - 1
    proc = run_cli("plan", "--cloud", server.address, "--model", MODEL_ID, "--cache", tmp_path / "c",
                   "--edge-profile", out, "--bandwidth", "100", "--rtt", "1")
    assert proc.returncode == 0 and "choice (latency): split" in proc.stdout
    assert not os.path.exists(str(tmp_path / "c" / (MODEL_ID + "-segments")))  # nothing fetched: the file was used


def test_run_edge_split_auto_runs_the_planned_split(server, tmp_path):
    report = tmp_path / "r.json"
    proc = run_cli("run-edge", "--cloud", server.address, "--model", MODEL_ID, "--cache", tmp_path, "--split",
                   "auto", "--bandwidth", "0.01", "--rtt", "5", "--dataset", "synthetic", "--limit", 5,
                   "--report", report)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(report.read_text())
    assert r["plan"]["choice"]["split"] == r["split"] == r["plan"]["choice"]["split"]
    assert "planned split" in proc.stderr


def test_sweep_measures_each_split_on_the_same_samples(server, store, tmp_path):
    n_points = len(store[1]["points"])
    splits = ",".join(str(s) for s in range(n_points))
    proc = run_cli("sweep", "--cloud", server.address, "--model", MODEL_ID, "--cache", tmp_path, "--splits", splits,
                   "--dataset", "synthetic", "--limit", 12, "--csv", tmp_path / "s.csv", "--png", tmp_path / "s.png")
    assert proc.returncode == 0, proc.stderr
    table = [l for l in proc.stdout.splitlines() if l.startswith("| ") and l[2].isdigit()]
    assert len(table) == n_points
    rows = list(csv.DictReader(open(str(tmp_path / "s.csv"))))
    assert [int(r["split"]) for r in rows] == list(range(n_points))
    assert len({r["accuracy"] for r in rows}) == 1  # the same samples give the same predictions at every split
    assert all(r["predicted_ms"] not in ("", None) for r in rows)
    assert float(rows[0]["edge_ms_mean"]) < float(rows[-1]["edge_ms_mean"])  # all on cloud vs all on edge
    png = (tmp_path / "s.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_plan_without_segments_says_how_to_make_them(tmp_path):
    root = tmp_path / "store"
    export_bundle(MODEL, "1", ExportOptions(random_init=True, out_dir=str(root)))
    srv = ServerProcess(root)
    try:
        proc = run_cli("plan", "--cloud", srv.address, "--model", MODEL_ID, "--cache", tmp_path / "c")
        assert proc.returncode != 0 and "--segments" in proc.stderr and "Traceback" not in proc.stderr
    finally:
        assert srv.stop() == 0


def test_adaptive_mode_moves_to_a_later_split_when_the_bandwidth_drops(seed_segments, labelled_npz, tmp_path):
    import subprocess
    import sys
    import time

    from conftest import REPO
    from slow_proxy import SlowProxy
    srv = ServerProcess(seed_segments)
    # the edge's cache starts empty: it fetches the segments to profile, and a switch runs the new head as a
    # chain of those segments instead of fetching a 90 MiB head over the slowed link
    proxy = SlowProxy(srv.host, srv.port)  # no limit at first
    report = tmp_path / "r.json"
    data, labels = labelled_npz
    try:
        edge = subprocess.Popen([sys.executable, os.path.join(REPO, "cli.py"), "run-edge", "--cloud", proxy.address,
                                 "--cache", str(tmp_path / "cache"), "--split", "3", "--adaptive", "--rtt", "0.3",
                                 "--bandwidth", "5000", "--dataset", "npz:" + data, "--limit", "300",
                                 "--report", str(report)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while not any("event=hello" in l for l in srv.log) and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(1.5)
        # 256 kbit/s: an input (12 KiB) takes ~400 ms a request, the logits 12 ms, so a late split wins whatever
        # the edge's profile says (at 2 Mbit/s split 0, ~50 ms, beat a whole model profiled at 85 ms in a
        # whole-suite run, and the edge rightly stayed there)
        proxy.rate = 32 * 1024
        dropped = time.time()
        out, err = edge.communicate(timeout=600)
        assert edge.returncode == 0, err
    finally:
        proxy.close()
        assert srv.stop() == 0
    r = json.loads(report.read_text())
    assert r["predictions"] == labels[:300].tolist() and r["n"] == 300  # every sample, once, correct
    switches = r["switches"]  # the profiles may move it early on too; the drop must end it at a late split
    assert switches and switches[-1]["to_split"] >= 17 and "bandwidth now" in switches[-1]["reason"], switches
    assert all(s["from_split"] != s["to_split"] for s in switches) and len(switches) <= 4  # no flapping
    last = switches[-1]["after_samples"]
    assert 0 < last < 300 and len(set(r["bundles"][last:])) == 1
    assert "Switches: split 3 -> " in out
    assert [f["split"] for f in r["fetches"]] == [3]  # only the starting head; later ones are segment chains
    assert switches[-1]["head"] == "segment-chain"
    assert time.time() - dropped < 120
