"""Cuts where several tensors cross (``"K.J"`` splits, manifest schema 2, protocol 3), end to end with real processes.

The seed's ResNet-50 inside a bottleneck block (the block's input still crosses for the skip, beside the
residual branch's activation) with the seed's weights, so every prediction is checked against the tests' own
copy of the model; the tests' tiny DenseNet-like model (tests/fixtures/tiny_models.py) for a cut of three.
"""
import json
import socket

import numpy as np
import pytest
from cloud_server import ServerProcess
from conftest import assert_seed_report_first, run_cli

from runtime.bundle.manifest import load_manifest
from runtime.wire import codec

CUT = "4.4"  # inside conv2_x.1: its input (256x32x32) and residual_function.3's output (64x32x32) cross
DENSE = "tiny_models:dense"


@pytest.fixture(scope="module")
def store(tmp_path_factory, seed_weights):
    """The seed's ResNet-50 cut at 4.4 (by the export command) and at 20; the dense model at 2.3, and its segments
    with its cuts of up to 3 tensors (for the planner)."""
    root = tmp_path_factory.mktemp("multi-artifacts")
    for model, what, extra in (("resnet50", ("--split", CUT), ("--weights", seed_weights)),
                               ("resnet50", ("--split", "20"), ("--weights", seed_weights)),
                               (DENSE, ("--split", "2.3"), ("--random-init",)),
                               (DENSE, ("--segments", "--max-tensors", 3), ("--random-init",))):
        proc = run_cli("export", "--model", model, *what, "--artifacts", root, *extra)
        assert proc.returncode == 0, proc.stderr
    return root


@pytest.fixture(scope="module")
def server(store):
    srv = ServerProcess(store)
    yield srv
    assert srv.stop() == 0, srv.log_text()


def test_export_writes_the_cut_as_a_list_of_named_tensors_verified_one_by_one(store):
    listed = json.loads(run_cli("layers", "--max-tensors", 2, "--json").stdout)["points"]
    cut = next(p for p in listed if p["index"] == CUT)
    manifest = load_manifest(str(store / "resnet50-s4.4"))
    assert manifest["schema_version"] == 2 and manifest.split_index == CUT
    assert manifest["split"]["index"] == 4 and manifest["split"]["cut"] == CUT
    crossing = manifest.boundaries
    assert [t["name"] for t in crossing] == ["boundary_0", "boundary_1"]
    assert [t["source"] for t in crossing] == [t["name"] for t in cut["tensors"]] == [
        "conv2_x.0", "conv2_x.1.residual_function.3"]
    assert [t["shape"][1:] for t in crossing] == [[256, 32, 32], [64, 32, 32]]
    assert manifest["boundary"]["bytes_per_sample"] == cut["bytes_per_sample"] == (256 + 64) * 32 * 32 * 4
    results = manifest["verification"]["results"]
    for fmt in ("onnx", "torchscript"):
        for batch in (1, 4):
            checked = {r["tensor"] for r in results if r["format"] == fmt and r["batch_size"] == batch}
            assert checked == {"boundary_0", "boundary_1", "output"}
    assert all(r["passed"] for r in results) and manifest["verification"]["meaningful"]
    assert load_manifest(str(store / "resnet50-s20"))["schema_version"] == 1, "one tensor: still version 1"


@pytest.mark.parametrize("backend,batch,args", [
    ("onnx", 1, ()), ("onnx", 4, ("--inflight", 3)), ("torchscript", 4, ()),
])
def test_every_prediction_at_a_cut_of_two_tensors_matches_the_unsplit_model(backend, batch, args, server, tmp_path,
                                                                             labelled_npz):
    data, labels = labelled_npz[0], labelled_npz[1][:24]
    report = tmp_path / "r.json"
    proc = run_cli("run-edge", "--cloud", server.address, "--model", "resnet50", "--cache", tmp_path / "cache",
                   "--split", CUT, "--backend", backend, "--dataset", "npz:" + data, "--limit", 24, "--batch-size",
                   batch, "--report", report, *args)
    assert proc.returncode == 0, proc.stderr
    assert_seed_report_first(proc.stdout)
    r = json.loads(report.read_text())
    assert r["predictions"] == labels.tolist() and r["split"] == CUT
    frame = codec.HEADER_SIZE * 1.0 / batch
    assert (256 + 64) * 32 * 32 * 4 < r["bytes_sent_per_sample"] < (256 + 64) * 32 * 32 * 4 + 2 * frame + 400


def test_compression_works_tensor_by_tensor(server, tmp_path, labelled_npz):
    data, labels = labelled_npz[0], labelled_npz[1][:24]
    report = tmp_path / "r.json"
    proc = run_cli("run-edge", "--cloud", server.address, "--model", "resnet50", "--cache", tmp_path / "cache",
                   "--split", CUT, "--dataset", "npz:" + data, "--limit", 24, "--compress", "fp16", "--report", report)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(report.read_text())
    raw = (256 + 64) * 32 * 32 * 4
    assert raw / 2 < r["bytes_sent_per_sample"] < raw / 2 + 1000, "each tensor halved, metadata per tensor"
    assert np.mean(np.array(r["predictions"]) == labels) >= 0.9  # fp16 may flip a close call, not many


def test_a_cut_of_three_tensors_round_trips_through_a_batching_server(store, tmp_path):
    srv = ServerProcess(store, "--max-batch", 4, "--max-delay-ms", 20)
    try:
        report = tmp_path / "r.json"
        proc = run_cli("run-edge", "--cloud", srv.address, "--model", DENSE, "--cache", tmp_path / "cache",
                       "--split", "2.3", "--dataset", "synthetic", "--limit", 32, "--inflight", 4, "--report", report)
        assert proc.returncode == 0, proc.stderr
        r = json.loads(report.read_text())
        whole = run_cli("run-edge", "--cloud", srv.address, "--model", DENSE, "--cache", tmp_path / "cache",
                        "--split", "2.3", "--dataset", "synthetic", "--limit", 32, "--report", tmp_path / "w.json")
        assert whole.returncode == 0, whole.stderr
        assert r["predictions"] == json.loads((tmp_path / "w.json").read_text())["predictions"]
    finally:
        assert srv.stop() == 0, srv.log_text()
    assert _reference_predictions(tmp_path) == r["predictions"]


def test_the_batcher_joins_and_splits_requests_of_three_tensors_tensor_by_tensor(store):
    """Four requests of 1..4 samples, queued before the batch closes at 10 samples: one tail run, each request
    given exactly its own rows back (a real tail; batched and unbatched runs may round differently)."""
    import threading

    from runtime.backends import load_part
    from runtime.cloud.batching import DynamicBatcher
    manifest = load_manifest(str(store / "tiny_models-dense-s2.3"))
    assert [t["shape"][1:] for t in manifest.boundaries] == [[8, 16, 16], [8, 16, 16], [4, 16, 16]]
    tail = load_part(manifest, "tail", threads=1)
    rng = np.random.RandomState(0)
    requests = [tuple(rng.rand(n, *t["shape"][1:]).astype(np.float32) for t in manifest.boundaries)
                for n in (1, 2, 3, 4)]
    results, done = {}, threading.Event()

    def deliver(i):
        def call(out, queue_ms, compute_ms, batch, error):
            assert error is None and batch == 10
            results[i] = out.copy()
            if len(results) == len(requests):
                done.set()
        return call

    batcher = DynamicBatcher(tail, max_batch=10, max_delay_ms=60000)
    for i, x in enumerate(requests):
        batcher.submit(x, deliver(i), source=i)
    assert done.wait(60)
    batcher.close()
    assert batcher.batches == 1 and batcher.samples == 10
    for i, x in enumerate(requests):
        want = tail.run(x)
        assert results[i].shape == (len(x[0]), 10)
        assert np.abs(results[i] - want).max() <= 1e-5 + 1e-4 * np.abs(want).max(), i


def _reference_predictions(tmp_path):
    """The dense model's own predictions, unsplit in torch, on run-edge's synthetic images."""
    import torch
    from tiny_models import dense

    from runtime.edge.data import open_dataset, preprocess_batch
    manifest = load_manifest(str(next(p for p in (tmp_path / "cache").iterdir() if p.name.endswith("-s2.3"))))
    data = open_dataset("synthetic", manifest["input"], 10, limit=32)
    x = preprocess_batch(data.images(list(range(32))), manifest["input"]["preprocess"])
    with torch.no_grad():
        return dense()(torch.from_numpy(x)).argmax(1).tolist()


def test_a_version_2_peer_is_told_to_update_not_fed_garbage(server):
    sock = socket.create_connection((server.host, server.port), timeout=20)
    try:
        meta = b'{"model":"resnet50","split":20}'
        sock.sendall(codec.HEADER.pack(codec.MAGIC, 2, codec.HELLO, 0, 1, len(meta), 0, 0, 0) + meta)
        reply = sock.recv(4096)
    finally:
        sock.close()
    assert reply[:4] == codec.MAGIC and reply[4] == 3 and reply[5] == codec.ERROR
    meta_len = int.from_bytes(reply[16:20], "little")
    error = json.loads(reply[36:36 + meta_len].decode())
    assert error["code"] == "bad_version"
    assert "protocol version 2 (this side speaks 3)" in error["message"] and "update" in error["message"]


def test_a_version_3_frame_read_by_this_reader_is_checked_tensor_by_tensor():
    """A frame of two tensors whose metadata claims more bytes than it carries is refused before any allocation."""
    meta = json.dumps({"tensors": [{"dtype": "float32", "shape": [1, 4]}, {"dtype": "float32", "shape": [1, 1 << 28]}]})
    with pytest.raises(codec.ProtocolError, match="need .* bytes"):
        codec.decode_meta(codec.INFER, meta.encode(), 24)


def test_a_cut_over_the_clouds_frame_limit_is_refused_in_one_line_before_any_request(store, tmp_path):
    srv = ServerProcess(store, "--max-frame-mb", 1)
    try:
        proc = run_cli("run-edge", "--cloud", srv.address, "--model", "resnet50", "--cache", tmp_path / "cache",
                       "--split", CUT, "--dataset", "synthetic", "--limit", 4)
    finally:
        assert srv.stop() == 0
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: split 4.4: the 2 tensors of --batch-size 1 take 1.25 MiB, over the cloud's "
                                "frame limit of 1.00 MiB; start serve-cloud with a larger --max-frame-mb"), proc.stderr
    assert '"requests": 0,' in srv.log_text(), "refused before the first request"


def test_triton_refuses_a_cut_of_several_tensors_in_one_line(store, tmp_path):
    repo = tmp_path / "repo"
    proc = run_cli("export-triton", str(store / "resnet50-s4.4"), "--repo", repo)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("error: bundle ") and "passes 2 tensors" in proc.stderr
    assert not repo.exists() or not any(repo.iterdir())


def test_the_sweep_measures_a_cut_of_several_tensors_beside_single_points(server, tmp_path):
    csv = tmp_path / "sweep.csv"
    proc = run_cli("sweep", "--cloud", server.address, "--model", "resnet50", "--cache", tmp_path / "cache",
                   "--splits", "4.4,20", "--dataset", "synthetic", "--limit", 8, "--csv", csv, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    rows = [line.split(",") for line in csv.read_text().splitlines()]
    header = rows[0]
    splits = [row[header.index("split")] for row in rows[1:]]
    assert splits == ["4.4", "20"]
    sent = {row[header.index("split")]: float(row[header.index("bytes_per_sample")]) for row in rows[1:]}
    assert sent["4.4"] > (256 + 64) * 32 * 32 * 4 > sent["20"]


def test_adaptive_mode_is_refused_at_a_cut_of_several_tensors_in_one_line():
    proc = run_cli("run-edge", "--cloud", "127.0.0.1:1", "--split", "4.4", "--adaptive")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: --adaptive switches among single-tensor points (it can run their heads from the cached segments), "
        "not cuts of several tensors such as 4.4: start it at --split K or auto")


def test_a_split_that_is_not_a_point_or_a_cut_is_refused_before_connecting(store, tmp_path):
    """A --split that is neither an index, a cut nor a name the model's points have (its segments in the cache
    name them all) is one line listing them; no cloud is asked (nothing listens at port 1)."""
    proc = run_cli("run-edge", "--cloud", "127.0.0.1:1", "--model", DENSE, "--cache", store, "--split", "4.x",
                   "--dataset", "synthetic")
    assert proc.returncode == 1 and "'4.x' is not a valid split point" in proc.stderr, proc.stderr
    assert "valid: 0=input, 1=" in proc.stderr and "cannot connect" not in proc.stderr
    proc = run_cli("run-edge", "--cloud", "127.0.0.1:1", "--split", " ")
    assert proc.returncode == 2 and "expected a split point" in proc.stderr
    out = tmp_path / "never-written"
    proc = run_cli("export", "--split", "4.99", "--random-init", "--artifacts", out)
    assert proc.returncode == 1 and "'4.99' is not a valid split point" in proc.stderr
    assert not out.exists() or not any(out.iterdir())


def test_the_planner_and_the_sweep_consider_cuts_of_several_tensors(server, store, tmp_path):
    segments = load_manifest(str(store / "tiny_models-dense-segments"))
    assert segments["schema_version"] == 2 and [c["index"] for c in segments["cuts"]] == ["2.1", "2.2", "2.3", "2.4"]
    proc = run_cli("plan", "--cloud", server.address, "--model", DENSE, "--cache", tmp_path / "cache", "--bandwidth",
                   100, "--rtt", 1)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("|") for line in proc.stdout.splitlines() if line.startswith("| ")][1:]
    # every point and cut, then local (the whole model on the edge: planned, not served by an empty cache)
    assert [r[1].strip() for r in rows] == ["0", "1", "2", "2.1", "2.2", "2.3", "2.4", "3", "4", "5", "6", "local"]
    assert "not served" in next(line for line in proc.stdout.splitlines() if line.startswith("| local |"))
    sizes = {r[1].strip(): int(r[3]) for r in rows}
    assert sizes["2.3"] == (8 + 8 + 4) * 16 * 16 * 4 and sizes["2.1"] == (8 + 8) * 16 * 16 * 4
    assert "splits K.J: cuts of several tensors, their compute estimated" in proc.stdout
    csv = tmp_path / "sweep.csv"
    proc = run_cli("sweep", "--cloud", server.address, "--model", DENSE, "--cache", tmp_path / "cache", "--splits",
                   "2.3", "--dataset", "synthetic", "--limit", 8, "--bandwidth", 100, "--rtt", 1, "--csv", csv,
                   cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    lines = csv.read_text().splitlines()
    row = dict(zip(lines[0].split(","), lines[1].split(",")))
    assert row["split"] == "2.3" and float(row["predicted_ms"]) > 0, "the planner's prediction beside the measurement"
