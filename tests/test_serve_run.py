"""serve-cloud and run-edge as real processes over loopback: parity, concurrency, handshake, lean edge."""
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from cloud_server import ServerProcess
from conftest import REPO, run_cli
from exporter.bundle import export_bundle
from runtime.data import preprocess_batch
from seed_reference import forward

SPLITS = [0, 3, 10, 16, 20, 22]  # the seed's table
SEED_REPORT = re.compile(r"Accuracy: (\d+\.\d\d)%\nAvg edge inference latency: \d+\.\d{3} ms\n"
                         r"Avg transmission latency: \d+\.\d{3} ms\nAvg cloud inference latency: \d+\.\d{3} ms\n")


@pytest.fixture(scope="module")
def artifacts(seed_bundles):
    return seed_bundles[0]


@pytest.fixture(scope="module")
def labelled_npz(tmp_path_factory, seed_weights, artifacts):
    """Raw images labelled by the tests' independent copy of the model: every correct run scores 100%."""
    rng = np.random.RandomState(11)
    x = rng.randint(0, 256, size=(24, 32, 32, 3)).astype(np.uint8)
    manifest = json.load(open(str(artifacts / "resnet50-s20" / "manifest.json")))
    inputs = torch.from_numpy(preprocess_batch(x, manifest["input"]["preprocess"]))
    with torch.no_grad():
        logits = forward(torch.load(seed_weights), inputs).numpy()
    top2 = np.sort(logits, axis=1)[:, -2:]
    assert (top2[:, 1] - top2[:, 0]).min() > 1e-3  # no near-ties, so the labels are unambiguous
    path = tmp_path_factory.mktemp("data") / "labelled.npz"
    np.savez(str(path), x=x, y=logits.argmax(1))
    return str(path), logits.argmax(1)


@pytest.fixture(scope="module")
def server(artifacts):
    srv = ServerProcess(artifacts)
    yield srv
    assert srv.stop() == 0, srv.log_text()
    assert "summary:" in srv.log_text()


def run_edge(server, artifacts, *args, **kwargs):
    return run_cli("run-edge", "--cloud", server.address, "--artifacts", artifacts, *args, **kwargs)


@pytest.mark.parametrize("split,backend", [(s, b) for s in range(23) for b in ("onnx", "torchscript")
                                           if b == "onnx" or s in SPLITS])
def test_every_prediction_matches_the_unsplit_model(split, backend, server, artifacts, labelled_npz, tmp_path):
    data, labels = labelled_npz
    report = tmp_path / "r.json"
    proc = run_edge(server, artifacts, "--split", split, "--backend", backend, "--dataset", "npz:" + data,
                    "--limit", 24, "--batch-size", 4 if split % 2 else 1, "--report", report)
    assert proc.returncode == 0, proc.stderr
    match = SEED_REPORT.search(proc.stdout)
    assert match and proc.stdout.startswith(match.group(0)), proc.stdout
    assert match.group(1) == "100.00"
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


def test_eight_edges_at_once_each_get_their_own_replies(server, artifacts, labelled_npz, tmp_path):
    data, labels = labelled_npz
    procs = []
    for i in range(8):
        report = tmp_path / "r{}.json".format(i)
        cmd = [sys.executable, os.path.join(REPO, "cli.py"), "run-edge", "--cloud", server.address, "--artifacts",
               str(artifacts), "--split", str(SPLITS[i % len(SPLITS)]), "--dataset", "npz:" + data, "--limit", "24",
               "--shuffle", "--seed", str(i), "--warmup", "0", "--report", str(report)]
        procs.append((subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), report, i))
    for proc, report, i in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        r = json.loads(report.read_text())
        order = np.arange(24)
        np.random.RandomState(i).shuffle(order)
        assert r["labels"] == labels[order].tolist()  # each edge's own sample order
        assert r["predictions"] == r["labels"]


def test_server_loads_each_tail_once(server):
    loaded = [l for l in server.log if "loaded tail of" in l]
    assert len(loaded) == len(set(loaded)) and len(loaded) <= 23


def test_a_head_from_another_export_is_refused(server, artifacts, tmp_path):
    other = tmp_path / "edge-artifacts"
    export_bundle("resnet50", "20", random_init=True, out_dir=str(other), formats=["onnx"])
    proc = run_edge(server, other, "--split", 20, "--dataset", "synthetic", "--limit", 2)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "different exports" in proc.stderr and proc.stderr.count("\n") == 1


def test_a_split_the_cloud_does_not_hold_is_refused(server, tmp_path):
    edge = tmp_path / "edge-artifacts"
    export_bundle("tiny_models:build", "1", random_init=True, out_dir=str(edge), formats=["onnx"])
    proc = run_edge(server, edge, "--model", "tiny_models-build", "--split", 1, "--dataset", "synthetic",
                    "--limit", 2)
    assert proc.returncode != 0 and "holds no bundle for tiny_models-build split 1" in proc.stderr


def test_missing_bundle_unreachable_cloud_and_corrupt_head_are_one_line_errors(server, artifacts, tmp_path):
    proc = run_edge(server, tmp_path, "--split", 20, "--dataset", "synthetic")
    assert proc.returncode != 0 and "no bundle for resnet50 split 20" in proc.stderr and "cli.py export" in proc.stderr
    proc = run_cli("run-edge", "--cloud", "127.0.0.1:1", "--artifacts", artifacts, "--split", 20,
                   "--dataset", "synthetic")
    assert proc.returncode != 0 and "cannot connect to the cloud at 127.0.0.1:1" in proc.stderr
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(str(artifacts / "resnet50-s20"), str(copy / "resnet50-s20"))
    with open(str(copy / "resnet50-s20" / "head.onnx"), "r+b") as f:
        f.seek(1000)
        f.write(b"\0\1\2\3")
    proc = run_edge(server, copy, "--split", 20, "--dataset", "synthetic")
    assert proc.returncode != 0 and "head.onnx is corrupt: sha256" in proc.stderr
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


def test_server_with_torchscript_tails(artifacts, labelled_npz):
    data, labels = labelled_npz
    srv = ServerProcess(artifacts, "--backend", "torchscript")
    try:
        proc = run_edge(srv, artifacts, "--split", 10, "--dataset", "npz:" + data, "--limit", 8)
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
