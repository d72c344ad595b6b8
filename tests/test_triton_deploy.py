"""``push --triton-repo``: a bundle into a Triton model repository as the next version of its split's entry,
loaded by running servers (explicit model control), and the fleet's active bundle kept in the repository
(``<model>-active``), which following edges switch to at their next batch without losing or repeating a sample.

Real serve-triton servers, real ``cli.py push`` and ``run-edge`` subprocesses; skipped, with the reason, where
nvidia-pytriton is not installed.
"""
import json
import subprocess
import time

import numpy as np
import pytest
from conftest import REPO, TINY, TINY_ID, run_cli, tiny_bundle
from test_triton_serve import edge_argv, statistics
from triton_server import TritonProcess, unavailable

from runtime.backends import load_part
from runtime.bundle.manifest import load_manifest
from runtime.cloud.triton import read_config

REASON = unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


def push(*args):
    done = run_cli("push", *args, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_pushed_and_activated_split_is_followed_by_the_edge_mid_run(tiny_bundles, tiny_labelled_npz, tmp_path):
    repo = tmp_path / "repo"
    out = push(tiny_bundle(tiny_bundles, 3), "--triton-repo", repo, "--activate")
    assert "as {}-s3 version 1".format(TINY_ID) in out and out.rstrip().endswith(", active")
    server = TritonProcess(repo)
    report = tmp_path / "r.json"
    # no --split: the edge asks the repository's active bundle (split 3), then follows it
    argv = edge_argv("grpc://" + server.grpc, tiny_bundles, tiny_labelled_npz[0], "--report", report,
                     "--interval-ms", 30, limit=300)
    argv.remove("--split")
    argv.remove("3")
    edge = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while statistics(server, "{}-s3".format(TINY_ID))[0] < 40:
            assert time.monotonic() < deadline and edge.poll() is None, edge.communicate()[1]
            time.sleep(0.1)
        out = push(tiny_bundle(tiny_bundles, 5), "--triton-repo", repo, "--triton", "http://" + server.http,
                   "--activate")
        assert "loaded on http://" in out
        assert edge.poll() is None, "the run ended before the push was done: make it longer"
        _, err = edge.communicate(timeout=300)
        after = statistics(server, "{}-s5".format(TINY_ID))[0]
    finally:
        if edge.poll() is None:
            edge.kill()
        assert server.stop() == 0
    assert edge.returncode == 0, err
    r = json.loads(report.read_text())
    assert r["n"] == 300 and r["predictions"] == tiny_labelled_npz[1][:300].tolist()  # each sample once, right
    (switch,) = r["switches"]
    assert (switch["from_split"], switch["to_split"]) == (3, 5) and "activated on the cloud" in switch["reason"]
    s5 = load_manifest(str(tiny_bundle(tiny_bundles, 5))).bundle_id
    assert r["bundles"][-1] == s5 and r["bundles"].count(s5) == 300 - switch["after_samples"]
    assert after == 300 - switch["after_samples"]
    pointer = read_config(str(repo / "{}-active".format(TINY_ID))).parameters
    assert pointer["bundle_id"].string_value == s5 and pointer["entry"].string_value == "{}-s5".format(TINY_ID)


@pytest.fixture(scope="module")
def retrained(tiny_bundles, tmp_path_factory):
    """The tiny model at split 3 again, from other weights: another bundle of the same split."""
    import torch
    from tiny_models import classifier
    root = tmp_path_factory.mktemp("retrained")
    model = classifier()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.25)
    torch.save(model.state_dict(), str(root / "w.pth"))
    done = run_cli("export", "--model", TINY, "--split", 3, "--weights", root / "w.pth", "--out", root, timeout=300)
    assert done.returncode == 0, done.stderr
    return tiny_bundle(root, 3)


def test_a_new_bundle_of_the_same_split_is_the_next_version_and_both_are_served(tiny_bundles, retrained, tmp_path):
    import tritonclient.grpc as grpcclient
    repo = tmp_path / "repo"
    old, new = tiny_bundle(tiny_bundles, 3), retrained
    push(old, "--triton-repo", repo, "--activate")
    server = TritonProcess(repo)
    try:
        out = push(new, "--triton-repo", repo, "--triton", "grpc://" + server.grpc, "--activate")
        assert "version 2" in out
        assert "(already there)" in push(new, "--triton-repo", repo)  # the newest already: nothing added
        entry = repo / "{}-s3".format(TINY_ID)
        params = read_config(str(entry)).parameters
        ids = [load_manifest(str(b)).bundle_id for b in (old, new)]
        assert ids[0] != ids[1]
        assert [params["bundle_id.v1"].string_value, params["bundle_id.v2"].string_value] == ids
        assert params["bundle_id"].string_value == ids[1]
        assert read_config(str(entry)).version_policy.latest.num_versions == 2
        # both versions answer, each with its own bundle's tail (an edge on the old head is still served right)
        client = grpcclient.InferenceServerClient(server.grpc)
        x = np.random.RandomState(3).rand(2, 3, 16, 16).astype(np.float32)
        for version, bundle in (("1", old), ("2", new)):
            manifest = load_manifest(str(bundle))
            boundary = load_part(manifest, "head", "onnx", "cpu").run(x)
            tensor = grpcclient.InferInput("boundary", list(boundary.shape), "FP32")
            tensor.set_data_from_numpy(boundary)
            got = client.infer(entry.name, [tensor], model_version=version).as_numpy("output")
            assert np.array_equal(got, load_part(manifest, "tail", "onnx", "cpu").run(boundary)), version
        client.close()
    finally:
        assert server.stop() == 0


def test_push_to_a_server_that_cannot_load_is_one_line_and_the_repository_keeps_the_entry(tiny_bundles, tmp_path):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    done = run_cli("push", tiny_bundle(tiny_bundles, 4), "--triton-repo", tmp_path / "repo", "--triton",
                   "http://127.0.0.1:{}".format(port), timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "Triton at http://127.0.0.1:{} could not load {}-s4".format(port, TINY_ID) in done.stderr
    assert (tmp_path / "repo" / "{}-s4".format(TINY_ID) / "1").is_dir()
    for args, said in ((["--triton", "http://x:1"], "--triton goes with --triton-repo"),
                       (["--triton-repo", tmp_path / "r2", "--to", tmp_path / "t"], "exactly one of")):
        done = run_cli("push", tiny_bundle(tiny_bundles, 4), *args, timeout=120)
        assert done.returncode == 2 and said in done.stderr, done.stderr
