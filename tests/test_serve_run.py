"""serve-cloud and run-edge as real processes over loopback: parity, concurrency, handshake, lean edge.

The seed's ResNet-50 where its split numbering and report are the point (parity at every split, the lean edge,
a stop mid-run); the tests' tiny model (tests/fixtures/tiny_models.py) for concurrency and the handshake."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from cloud_server import ServerProcess
from conftest import REPO, SEED_REPORT, TINY, TINY_ID, TINY_SPLITS, assert_seed_report_first, run_cli

from exporter.bundle import export_bundle
from exporter.options import ExportOptions

SPLITS = [0, 3, 10, 16, 20, 22]  # the seed's table


@pytest.fixture(scope="module")
def artifacts(seed_bundles):
    return seed_bundles[0]


@pytest.fixture(scope="module")
def server(artifacts):
    srv = ServerProcess(artifacts)
    yield srv
    assert srv.stop() == 0, srv.log_text()
    assert "summary:" in srv.log_text()


@pytest.fixture(scope="module")
def tiny_server(tiny_bundles):
    srv = ServerProcess(tiny_bundles)
    yield srv
    assert srv.stop() == 0, srv.log_text()


def run_edge(server, artifacts, *args, **kwargs):
    return run_cli("run-edge", "--cloud", server.address, "--artifacts", artifacts, *args, **kwargs)


@pytest.mark.parametrize("split,backend", [(s, b) for s in range(23) for b in ("onnx", "torchscript")
                                           if b == "onnx" or s in SPLITS])
def test_every_prediction_matches_the_unsplit_model(split, backend, server, artifacts, labelled_npz, tmp_path):
    data, labels = labelled_npz[0], labelled_npz[1][:24]
    report = tmp_path / "r.json"
    proc = run_edge(server, artifacts, "--split", split, "--backend", backend, "--dataset", "npz:" + data,
                    "--limit", 24, "--batch-size", 4 if split % 2 else 1, "--report", report)
    assert proc.returncode == 0, proc.stderr
    assert_seed_report_first(proc.stdout)
    r = json.loads(report.read_text())
    assert r["predictions"] == labels.tolist() and r["labels"] == labels.tolist()
    assert r["accuracy"] == 1.0 and r["n"] == 24 and r["split"] == split
    assert r["backend"] == (backend if split else "none") or split == 0
    assert r["provider"] == ("none" if split == 0 else "CPUExecutionProvider" if backend == "onnx" else "cpu")
    for figure in ("edge_ms", "transmission_ms", "cloud_ms", "end_to_end_ms"):
        assert set(r[figure]) == {"mean", "p50", "p99"} and r[figure]["p99"] >= r[figure]["p50"] >= 0
    boundary = json.load(open(str(artifacts / "resnet50-s{}".format(split) / "manifest.json")))["boundary"]
    assert r["bytes_sent_per_sample"] >= boundary["bytes_per_sample"]
    assert r["throughput_samples_per_s"] > 0 and r["warmup_requests"] == 3


def test_verbose_prints_prediction_and_ground_truth(server, artifacts, labelled_npz):
    data, labels = labelled_npz
    proc = run_edge(server, artifacts, "--split", 20, "--dataset", "npz:" + data, "--limit", 3, "--verbose")
    assert proc.returncode == 0, proc.stderr
    lines = [l for l in proc.stdout.splitlines() if l.startswith("Prediction")]
    assert lines == ["Prediction: {0} / Ground Truth: {0}".format(l) for l in labels[:3]]


def test_eight_edges_at_once_each_get_their_own_replies(tiny_server, tiny_bundles, tiny_labelled_npz, tmp_path):
    labelled_npz = tiny_labelled_npz
    data = labelled_npz[0]
    procs = []
    for i in range(8):
        report = tmp_path / "r{}.json".format(i)
        cmd = [sys.executable, os.path.join(REPO, "cli.py"), "run-edge", "--cloud", tiny_server.address, "--artifacts",
               str(tiny_bundles), "--model", TINY_ID, "--split", str(TINY_SPLITS[i]), "--dataset", "npz:" + data,
               "--limit", "100", "--shuffle", "--seed", str(i), "--warmup", "0", "--report", str(report)]
        procs.append((subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), report, i))
    for proc, report, i in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        r = json.loads(report.read_text())
        order = np.arange(len(labelled_npz[1]))
        np.random.RandomState(i).shuffle(order)
        assert r["labels"] == labelled_npz[1][order[:100]].tolist()  # each edge's own sample order
        assert r["predictions"] == r["labels"]


def test_server_loads_each_tail_once(server):
    loaded = [l for l in server.log if "loaded tail of" in l]
    assert len(loaded) == len(set(loaded)) and len(loaded) <= 23


def test_a_cached_head_from_another_export_is_never_paired_with_the_cloud_tail(tiny_server, tiny_labelled_npz,
                                                                               tmp_path):
    """The cache holds the same model and split, exported from other weights: its head is not the cloud's."""
    import torch
    from tiny_models import classifier
    other = classifier().state_dict()
    other["stem.0.weight"] = -other["stem.0.weight"]  # a head that computes other features
    torch.save(other, str(tmp_path / "other.pt"))
    cache = tmp_path / "edge-cache"
    _, foreign = export_bundle(TINY, "4", ExportOptions(weights=str(tmp_path / "other.pt"), out_dir=str(cache),
                                                        formats=["onnx"]))
    data, labels = tiny_labelled_npz
    report = tmp_path / "r.json"
    proc = run_edge(tiny_server, cache, "--model", TINY_ID, "--split", 4, "--dataset", "npz:" + data, "--limit", 8,
                    "--report", report)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(report.read_text())
    assert r["predictions"] == labels[:8].tolist()  # the cloud's head was fetched in place of the foreign one
    assert len(r["fetches"]) == 1 and r["bundle_id"] != foreign["bundle_id"]


def test_a_split_the_cloud_does_not_hold_is_refused(server, tmp_path):
    proc = run_edge(server, tmp_path, "--model", "tiny_models-build", "--split", 1, "--dataset", "synthetic",
                    "--limit", 2)
    assert proc.returncode != 0 and "holds no bundle for tiny_models-build split 1" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_unreachable_cloud_and_no_active_bundle_are_one_line_errors(server, artifacts, tmp_path):
    proc = run_cli("run-edge", "--cloud", "127.0.0.1:1", "--cache", tmp_path, "--split", 20,
                   "--dataset", "synthetic")
    assert proc.returncode != 0 and "cannot connect to the cloud at 127.0.0.1:1" in proc.stderr
    proc = run_edge(server, tmp_path, "--dataset", "synthetic")
    assert proc.returncode != 0 and "no bundle is active for resnet50" in proc.stderr and "--split" in proc.stderr
    for p in (proc,):
        assert "Traceback" not in p.stderr


def test_edge_runs_with_torch_unimportable(server, artifacts, labelled_npz, tmp_path):
    """The ONNX edge imports neither torch, torchvision nor onnx: poisoned copies shadow them."""
    poison = tmp_path / "poison"
    for name in ("torch", "torchvision", "onnx"):
        (poison / name).mkdir(parents=True)
        (poison / name / "__init__.py").write_text("raise ImportError('{} must not be imported on the edge')\n"
                                                   .format(name))
    data, _ = labelled_npz
    env = {"PYTHONPATH": "{}{}{}".format(poison, os.pathsep, REPO)}
    proc = run_edge(server, artifacts, "--split", 20, "--dataset", "npz:" + data, "--limit", 4, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Accuracy: 100.00%" in proc.stdout
    proc = run_edge(server, artifacts, "--split", 20, "--dataset", "npz:" + data, "--backend", "torchscript", env=env)
    assert proc.returncode != 0 and "needs torch" in proc.stderr


def test_server_with_torchscript_tails(tiny_bundles, tiny_labelled_npz):
    data, labels = tiny_labelled_npz
    srv = ServerProcess(tiny_bundles, "--backend", "torchscript")
    try:
        proc = run_edge(srv, tiny_bundles, "--model", TINY_ID, "--split", 3, "--dataset", "npz:" + data, "--limit", 8)
        assert proc.returncode == 0, proc.stderr
        assert "Accuracy: 100.00%" in proc.stdout
    finally:
        assert srv.stop() == 0
    assert "with torchscript on cpu" in srv.log_text()


def test_sigterm_lets_a_running_edge_finish_its_request_and_exits_0(artifacts, labelled_npz):
    data, _ = labelled_npz
    srv = ServerProcess(artifacts)
    edge = subprocess.Popen([sys.executable, os.path.join(REPO, "cli.py"), "run-edge", "--cloud", srv.address,
                             "--artifacts", str(artifacts), "--split", "3", "--dataset", "npz:" + data,
                             "--limit", "24", "--batch-size", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not any("loaded tail" in l for l in srv.log) and time.time() < deadline:
        time.sleep(0.05)
    assert srv.stop() == 0
    out, err = edge.communicate(timeout=60)
    # the server stopped mid-run: the edge is told why, in one line, and no request was half-answered
    assert edge.returncode != 0 and "shutting down" in err, (out, err)
    assert "summary:" in srv.log_text() and "internal" not in srv.log_text()


def test_a_stop_that_comes_before_the_accept_loop_starts_is_a_clean_stop(tmp_path):
    """A SIGTERM can land between serve-cloud's ready line and its accept loop (the server's signal handler
    closes the listener at once): the loop must then end cleanly, not fail on the closed socket (exit 1)."""
    from runtime.cloud.options import ServeOptions
    from runtime.cloud.server import _start
    server = _start(ServeOptions(artifacts=str(tmp_path), port=0))
    server.request_stop()  # what the SIGTERM handler does
    server.serve_forever()  # returns: no OSError from the closed listener
    assert server.listener.fileno() == -1


def test_demo_runs_the_whole_workflow_offline(tmp_path):
    proc = run_cli("demo", "--artifacts", tmp_path / "artifacts", "--data-dir", tmp_path / "data", "--limit", 10,
                   cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "RANDOM weights" in proc.stdout and "dataset synthetic" in proc.stdout
    assert SEED_REPORT.search(proc.stdout)
    assert "10 samples in 10 requests" in proc.stdout
    assert "summary: 1 connections" in proc.stderr  # the server it started was shut down cleanly
    again = run_cli("demo", "--artifacts", tmp_path / "artifacts", "--data-dir", tmp_path / "data", "--limit", 5,
                    cwd=str(tmp_path))
    assert again.returncode == 0 and "using " in again.stdout  # the bundle is reused, not exported again
