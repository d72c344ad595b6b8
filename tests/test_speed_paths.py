"""Pipelining (--inflight), dynamic batching (--max-batch) and their correctness, with real processes and tails.

Pipelining and batching on the tests' tiny model (tests/fixtures/tiny_models.py); compression on the seed's
ResNet-50, whose activations are big enough for the byte ratios to mean something."""
import json
import os
import re
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from cloud_server import ServerProcess
from conftest import REPO, TINY_ID, run_cli, tiny_bundle


@pytest.fixture(scope="module")
def artifacts(seed_bundles):
    return seed_bundles[0]


def test_pipelined_run_gives_every_prediction_once_in_input_order(tiny_bundles, tiny_labelled_npz, tmp_path):
    labelled_npz = tiny_labelled_npz
    srv = ServerProcess(tiny_bundles)
    try:
        report = tmp_path / "r.json"
        proc = run_cli("run-edge", "--cloud", srv.address, "--artifacts", tiny_bundles, "--model", TINY_ID,
                       "--split", "4", "--inflight", "4", "--dataset", "npz:" + labelled_npz[0], "--limit", "300",
                       "--report", report)
        assert proc.returncode == 0, proc.stderr
    finally:
        assert srv.stop() == 0
    r = json.loads(report.read_text())
    assert r["inflight"] == 4 and r["n"] == 300
    assert r["busy_poll"] is False  # a spinning receiver thread would hold the GIL the heads need
    assert r["labels"] == labelled_npz[1][:300].tolist() and r["predictions"] == r["labels"]


def test_batcher_splits_a_batch_back_to_each_request(tiny_bundles):
    """Many threads submit different activations to one real tail; each gets exactly its own rows back."""
    from runtime.backends import load_part
    from runtime.bundle.manifest import load_manifest
    from runtime.cloud.batching import DynamicBatcher
    manifest = load_manifest(str(tiny_bundle(tiny_bundles, 4)))
    tail = load_part(manifest, "tail", threads=1)
    batcher = DynamicBatcher(tail, max_batch=8, max_delay_ms=20)
    rng = np.random.RandomState(0)
    inputs = [rng.rand(1 + i % 3, 8, 16, 16).astype(np.float32) for i in range(24)]
    results, batch_sizes = {}, []

    def submit(i):
        done = threading.Event()

        def deliver(out, queue_ms, compute_ms, batch, error):
            assert error is None
            results[i] = out.copy()
            batch_sizes.append(batch)
            done.set()
        batcher.submit(inputs[i], deliver, source=i)
        assert done.wait(60)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    for i, x in enumerate(inputs):
        want = tail.run(x)  # batched and unbatched runs round differently: a bound on the tensor's scale
        assert np.abs(results[i] - want).max() <= 1e-4 + 1e-4 * np.abs(want).max(), i
    assert max(batch_sizes) > 3 and max(batch_sizes) <= 8  # requests really were batched, never past the cap
    assert batcher.samples == sum(len(x) for x in inputs) and batcher.batches < len(inputs)


def test_dynamic_batching_across_eight_pipelined_edges_never_mixes_replies(tiny_bundles, tiny_labelled_npz,
                                                                           tmp_path):
    """The eight edges hold their first sample until one wall-clock time (--start-at), so their runs overlap."""
    labelled_npz = tiny_labelled_npz
    srv = ServerProcess(tiny_bundles, "--max-batch", "8", "--max-delay-ms", "20", "--threads", "1")
    procs = []
    start_at = time.time() + 10.0  # after the eight processes have started on two cores
    try:
        for i in range(8):
            report = tmp_path / "r{}.json".format(i)
            cmd = [sys.executable, os.path.join(REPO, "cli.py"), "run-edge", "--cloud", srv.address, "--artifacts",
                   str(tiny_bundles), "--model", TINY_ID, "--split", "4", "--inflight", "2",
                   "--dataset", "npz:" + labelled_npz[0], "--limit", "30", "--shuffle", "--seed", str(i),
                   "--warmup", "0", "--threads", "1", "--start-at", repr(start_at), "--report", str(report)]
            procs.append((subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), report, i))
        reports = []
        for proc, report, i in procs:
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
            r = json.loads(report.read_text())
            order = np.arange(len(labelled_npz[1]))
            np.random.RandomState(i).shuffle(order)
            assert r["labels"] == labelled_npz[1][order[:30]].tolist()  # each edge's own samples, in its order
            assert r["predictions"] == r["labels"]
            reports.append(r)
    finally:
        assert srv.stop() == 0, srv.log_text()
    stats = re.search(r"batcher \w+: (\d+) batches, (\d+) samples", srv.log_text())
    assert stats, srv.log_text()
    batches, samples = int(stats.group(1)), int(stats.group(2))
    assert samples == 8 * 30 and batches < samples  # edges' requests shared tail runs
    assert all(r["queue_ms"]["p99"] > 0 for r in reports)  # queue time reported apart from compute


def test_adaptive_with_pipelining_is_refused_in_one_line(tmp_path):
    proc = run_cli("run-edge", "--cloud", "127.0.0.1:9", "--adaptive", "--inflight", "2", "--cache", tmp_path)
    assert proc.returncode != 0 and "--adaptive needs --inflight 1" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("split", [3, 16])
def test_compressed_runs_give_what_the_tail_makes_of_the_decoded_tensor_and_shrink_the_bytes(
        split, artifacts, labelled_npz, tmp_path):
    """100 labelled samples through real processes: fp32 exactly the unsplit model's predictions; fp16 and int8
    (+zstd) exactly what the tail makes of the decoded tensor (computed here in-process), in fewer bytes.

    How often lossy compression keeps the prediction is a property of the model, not of the transport: the tests'
    BN-calibrated random weights amplify the rounding of an early activation (int8 at split 3 moves the logits
    by up to a quarter of their range here), a trained network does not.  bench/speed.py measures agreement on
    trained weights."""
    srv = ServerProcess(artifacts, "--threads", "1")
    runs = {}
    try:
        for compress, codec in (("none", "none"), ("fp16", "none"), ("int8", "none"), ("int8", "zstd")):
            report = tmp_path / "{}-{}.json".format(compress, codec)
            proc = run_cli("run-edge", "--cloud", srv.address, "--artifacts", artifacts, "--split", split,
                           "--compress", compress, "--codec", codec, "--dataset", "npz:" + labelled_npz[0],
                           "--limit", "100", "--warmup", "0", "--threads", "1", "--report", report)
            assert proc.returncode == 0, proc.stderr
            runs[compress, codec] = json.loads(report.read_text())
    finally:
        assert srv.stop() == 0
    labels = labelled_npz[1][:100].tolist()
    fp32 = runs["none", "none"]
    assert fp32["predictions"] == labels  # uncompressed: exactly the unsplit model's
    for (compress, codec), r in runs.items():
        if compress != "none":
            assert r["predictions"] == _decoded_predictions(artifacts, split, labelled_npz[0], compress, codec,
                                                                  100), (compress, codec)
        ratio = r["bytes_sent_per_sample"] / fp32["bytes_sent_per_sample"]
        limit = {"none": 1.0, "fp16": 0.51, "int8": 0.26}[compress] if codec == "none" else 0.25
        assert ratio <= limit, (compress, codec, ratio)
        assert r["compress"] == compress and r["codec"] == codec


def _decoded_predictions(artifacts, split, npz, compress, codec, n):
    """Head, encode, decode and tail in this process, as the edge and the cloud do them: the predictions."""
    from runtime.backends import load_part
    from runtime.bundle.manifest import load_manifest
    from runtime.edge.data import preprocess_batch
    from runtime.wire.compression import Encoder, decode
    manifest = load_manifest(str(artifacts / "resnet50-s{}".format(split)))
    head, tail = load_part(manifest, "head", threads=1), load_part(manifest, "tail", threads=1)
    encoder = Encoder(compress, codec)
    images = np.load(npz)["x"][:n]
    out = []
    for i in range(n):
        x = preprocess_batch(images[i:i + 1], manifest["input"]["preprocess"])
        encoding, payload = encoder.encode(head.run(x))
        out.append(int(tail.run(decode(encoding, payload, manifest["boundary"]["shape"])).argmax()))
    return out
