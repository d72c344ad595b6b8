"""CUDA paths: TorchScript tails on the GPU, CUDA graph replay, serve-cloud --device cuda end to end.

Skipped (with the reason) where torch sees no CUDA device; the refusal of --cuda-graphs
without one runs everywhere.
"""
import json

import numpy as np
import pytest
from cloud_server import ServerProcess
from conftest import run_cli

torch = pytest.importorskip("torch")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is False)")


@pytest.fixture(scope="module")
def gpu_artifacts(tmp_path_factory, seed_weights):
    from exporter.bundle import export_bundle
    from exporter.options import ExportOptions
    root = tmp_path_factory.mktemp("gpu-artifacts")
    from runtime.bundle.manifest import load_manifest
    manifests = {}
    for split in (3, 16):
        directory, _ = export_bundle("resnet50", str(split), ExportOptions(weights=seed_weights, out_dir=str(root)))
        manifests[split] = load_manifest(directory)
    return root, manifests


@needs_cuda
@pytest.mark.parametrize("split", [3, 16])
def test_cuda_tail_matches_cpu_and_graph_replay_matches_eager(gpu_artifacts, split):
    from runtime.backends import load_part
    manifest = gpu_artifacts[1][split]
    shape = manifest["boundary"]["shape"][1:]
    cpu = load_part(manifest, "tail", "torchscript", "cpu")
    cuda = load_part(manifest, "tail", "torchscript", "cuda")
    graphs = load_part(manifest, "tail", "torchscript", "cuda", cuda_graphs=True)
    assert cuda.provider.startswith("cuda:") and graphs.provider.endswith("+graphs")
    rng = np.random.RandomState(split)
    for batch in (1, 4):
        xs = [rng.rand(batch, *shape).astype(np.float32) for _ in range(6)]
        for x in xs:  # the first calls run eagerly, then the shape is captured and replayed
            want = cpu.run(x)
            got = cuda.run(x)
            scale = np.abs(want).max()
            assert np.abs(got - want).max() <= 1e-3 * scale
            assert (got.argmax(1) == want.argmax(1)).all()
            replayed = graphs.run(x)
            assert np.abs(replayed - got).max() <= 1e-5 * scale
        assert graphs.graphs.graphs.get(tuple(xs[0].shape)) is not None, "the shape was never captured"
    parts = [rng.rand(n, *shape).astype(np.float32) for n in (1, 2, 1)]  # the dynamic batcher's call
    for _ in range(4):
        together = graphs.run_many(parts)
        assert np.abs(together - cuda.run(np.concatenate(parts))).max() <= 1e-5 * np.abs(together).max()


@needs_cuda
@pytest.mark.parametrize("edge", [("onnx", "cpu"), ("torchscript", "cuda")])
def test_serve_cloud_on_cuda_labels_every_sample(gpu_artifacts, labelled_npz, tmp_path, edge):
    """A batching, graph-replaying CUDA server and a pipelined edge: every sample labelled as the reference does."""
    srv = ServerProcess(gpu_artifacts[0], "--backend", "torchscript", "--device", "cuda", "--cuda-graphs",
                        "--max-batch", "4", "--max-delay-ms", "2")
    try:
        report = tmp_path / "r.json"
        proc = run_cli("run-edge", "--cloud", srv.address, "--artifacts", gpu_artifacts[0], "--split", "16",
                       "--backend", edge[0], "--device", edge[1], "--inflight", "4",
                       "--dataset", "npz:" + labelled_npz[0], "--limit", "120", "--report", report)
        assert proc.returncode == 0, proc.stderr
    finally:
        assert srv.stop() == 0
    r = json.loads(report.read_text())
    assert r["n"] == 120 and r["predictions"] == labelled_npz[1][:120].tolist()


def test_cuda_graphs_need_torchscript_on_cuda(tmp_path):
    proc = run_cli("serve-cloud", "--port", "0", "--artifacts", tmp_path, "--backend", "onnx", "--cuda-graphs",
                   timeout=60)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].endswith("--cuda-graphs needs --backend torchscript --device cuda")
