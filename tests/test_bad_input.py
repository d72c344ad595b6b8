"""Bad input found while trying the commands: one clear line, a non-zero exit, nothing left behind.

Real subprocesses of cli.py, a tiny model (tests/fixtures/tiny_models.py) where a bundle is needed.
"""
import os
import socket

import pytest
from cloud_server import ServerProcess
from conftest import run_cli

from runtime.edge.options import RunOptions


def a_closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return "127.0.0.1:{}".format(s.getsockname()[1])


def test_serve_cloud_refuses_a_store_that_is_not_there(tmp_path):
    missing = tmp_path / "artifact"  # a typo of "artifacts"
    proc = run_cli("serve-cloud", "--port", "0", "--artifacts", missing, timeout=60)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "is not a directory" in lines[0], proc.stderr
    assert not missing.exists()


def test_serve_cloud_makes_an_empty_store_it_is_to_fill(tmp_path):
    store = tmp_path / "pushed"
    srv = ServerProcess(store, "--allow-push", "--admin-token", "t0ken")
    try:
        assert store.is_dir()
    finally:
        assert srv.stop() == 0
    assert "created the empty store" in srv.log_text()


@pytest.mark.parametrize("dataset,message", [("npz:{missing}.npz", "dataset file"), ("folder:{missing}", "dataset folder"),
                                             ("imagenet", "unknown dataset")])
def test_run_edge_names_a_missing_dataset_before_a_cloud_that_is_down(tmp_path, dataset, message):
    spec = dataset.format(missing=tmp_path / "nowhere")
    proc = run_cli("run-edge", "--cloud", a_closed_port(), "--dataset", spec, "--cache", tmp_path / "cache",
                   timeout=60)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "cannot connect" not in lines[0], proc.stderr
    assert not (tmp_path / "cache").exists()


def test_export_writes_where_artifacts_says_as_serve_cloud_reads(tmp_path):
    store = tmp_path / "store"
    proc = run_cli("export", "--model", "tiny_models:build", "--split", "1", "--random-init", "--artifacts", store,
                   "--formats", "onnx")
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(str(store))) == ["tiny_models-build-s1"]
    legacy = run_cli("export", "--model", "tiny_models:build", "--split", "2", "--random-init", "--out", store,
                     "--formats", "onnx")  # the old name still works
    assert legacy.returncode == 0, legacy.stderr
    assert sorted(os.listdir(str(store))) == ["tiny_models-build-s1", "tiny_models-build-s2"]


def test_an_options_object_refuses_a_name_it_does_not_have():
    with pytest.raises(TypeError, match="RunOptions has no option 'inflght'"):
        RunOptions(inflght=2)
    options = RunOptions(inflight=2)
    assert (options.inflight, options.limit, options.replace(limit=5).limit, options.limit) == (2, 100, 5, 100)
