"""Profiles, the network probe, the planner, plan/profile/sweep and --split auto, on real processes."""
import csv
import json
import os
import shutil

import pytest
from cloud_server import ServerProcess
from conftest import TINY, TINY_ID, run_cli

from exporter.bundle import export_bundle
from exporter.options import ExportOptions
from runtime.backends.profiling import ProfileCache, profile_segments
from runtime.bundle.manifest import load_manifest
from runtime.bundle.schema import split_order
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
    served = [r for r in plan["rows"] if r["served"]]
    assert plan["choice"]["split"] == min(served, key=lambda r: (r["latency_ms"], split_order(r["split"])))["split"]
    local = plan["rows"][-1]  # the edge's cache holds no whole model yet: planned, shown, not chosen
    assert local["split"] == "local" and not local["served"] and local["network_ms"] == 0
    baseline = min(local["latency_ms"], plan["rows"][0]["latency_ms"])
    assert plan["best_baseline"]["latency_ms"] == baseline
    assert all(r["vs_best_baseline"] == pytest.approx(r["latency_ms"] / baseline) for r in plan["rows"])
    slow = json.loads(run_cli("plan", "--cloud", server.address, "--model", MODEL_ID, "--cache", tmp_path,
                              "--bandwidth", "0.01", "--rtt", "5", "--json").stdout)
    assert slow["network"]["source"] == "given"
    last = len(slow["rows"]) - 2  # the last point, before local
    assert slow["choice"]["split"] == last  # 10 kbit/s: send the 10 logits, not a feature map
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
    # the profiles may move it early on too; the drop must end it at a late split or at local (the whole model
    # here, as a chain of the segments it profiled: nothing on the slow link at all)
    switches = r["switches"]
    assert switches and switches[-1]["to_split"] in ["local"] + list(range(17, 23)), switches
    assert "bandwidth now" in switches[-1]["reason"], switches
    assert all(s["from_split"] != s["to_split"] for s in switches) and len(switches) <= 4  # no flapping
    last = switches[-1]["after_samples"]
    assert 0 < last < 300 and len(set(r["bundles"][last:])) == 1
    assert "Switches: split 3 -> " in out
    assert [f["split"] for f in r["fetches"]] == [3]  # only the starting head; later ones are segment chains
    assert switches[-1]["head"] == ("whole model" if switches[-1]["to_split"] == "local" else "segment-chain")
    assert time.time() - dropped < 120


def test_sweep_measures_local_beside_the_splits_and_compares_with_the_better_baseline(server, store, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    last = len(store[1]["points"]) - 1
    refused = run_cli("sweep", "--cloud", server.address, "--model", MODEL_ID, "--cache", cache, "--splits",
                      "0,local", "--dataset", "synthetic", "--limit", 4)
    assert refused.returncode != 0 and "--splits local: " in refused.stderr and "Traceback" not in refused.stderr
    shutil.copytree(str(store[0] / "{}-s{}".format(MODEL_ID, last)), str(cache / "{}-s{}".format(MODEL_ID, last)))
    proc = run_cli("sweep", "--cloud", server.address, "--model", MODEL_ID, "--cache", cache, "--splits",
                   "0,{},local".format(last), "--dataset", "synthetic", "--limit", 8, "--csv", tmp_path / "s.csv",
                   "--png", tmp_path / "s.png")
    assert proc.returncode == 0, proc.stderr
    assert "vs best baseline" in proc.stdout and any(l.startswith("| local |") for l in proc.stdout.splitlines())
    rows = list(csv.DictReader(open(str(tmp_path / "s.csv"))))
    assert [r["split"] for r in rows] == ["0", str(last), "local"]
    local = rows[-1]
    assert float(local["edge_ms_mean"]) > 0 and float(local["transmission_ms_mean"]) == 0
    assert float(local["cloud_ms_mean"]) == 0 and float(local["bytes_per_sample"]) == 0
    assert local["predicted_ms"] not in ("", None) and len({r["accuracy"] for r in rows}) == 1
    baseline = min(float(rows[0]["end_to_end_ms_mean"]), float(local["end_to_end_ms_mean"]))
    for r in rows:
        assert float(r["vs_best_baseline"]) == pytest.approx(float(r["end_to_end_ms_mean"]) / baseline)
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plan = json.loads(run_cli("plan", "--cloud", server.address, "--model", MODEL_ID, "--cache", cache,
                              "--bandwidth", "0.01", "--rtt", "5", "--json").stdout)
    assert plan["rows"][-1]["served"] and plan["choice"]["split"] == "local"  # the whole model is here now


def test_split_auto_chooses_only_among_the_splits_the_cloud_serves(tmp_path):
    from exporter.segments import export_segments
    root = tmp_path / "store"
    export_segments(MODEL, ExportOptions(random_init=True, out_dir=str(root)))
    srv = ServerProcess(root)  # segments only: no split to run, none exported on demand
    try:
        proc = run_cli("plan", "--cloud", srv.address, "--model", MODEL_ID, "--cache", tmp_path / "c")
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        error = proc.stderr.strip().splitlines()[-1]  # one line, after the profiling's progress
        assert "the cloud serves no split of {}".format(MODEL_ID) in error and "cli.py export --model" in error
    finally:
        assert srv.stop() == 0
    export_bundle(MODEL, "1", ExportOptions(random_init=True, out_dir=str(root)))
    srv = ServerProcess(root)
    try:
        # 10 kbit/s would choose the last point (test_plan_measures_both_sides_and_the_network); only 1 is held
        proc = run_cli("plan", "--cloud", srv.address, "--model", MODEL_ID, "--cache", tmp_path / "c",
                       "--bandwidth", "0.01", "--rtt", "5")
        assert proc.returncode == 0, proc.stderr
        assert "choice (latency): split 1 " in proc.stdout
        table = [l for l in proc.stdout.splitlines() if l.startswith("| ") and not l.startswith("| split")]
        assert [l.endswith(" not served") for l in table] == [True, False] + [True] * (len(table) - 2)
        auto = run_cli("run-edge", "--cloud", srv.address, "--model", MODEL_ID, "--cache", tmp_path / "c",
                       "--split", "auto", "--bandwidth", "0.01", "--rtt", "5", "--dataset", "synthetic",
                       "--limit", 3)
        assert auto.returncode == 0 and "planned split 1 " in auto.stderr, auto.stderr
    finally:
        assert srv.stop() == 0


def test_plan_predicts_the_bytes_compress_sends(server, tmp_path):
    """plan --compress fp16 plans each point's activation at half the bytes of the plain plan (plus its header)."""
    args = ("plan", "--cloud", server.address, "--model", MODEL_ID, "--cache", tmp_path, "--bandwidth", "100",
            "--rtt", "1", "--json")
    plain = json.loads(run_cli(*args).stdout)
    proc = run_cli(*(args + ("--compress", "fp16")))
    assert proc.returncode == 0, proc.stderr
    half = json.loads(proc.stdout)
    sent = [(a["bytes_per_sample"], b["bytes_per_sample"]) for a, b in zip(plain["rows"], half["rows"])
            if a["split"] != "local"]
    assert sent and all(a // 2 < b <= a // 2 + 100 for a, b in sent), sent
