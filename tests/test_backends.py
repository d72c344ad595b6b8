"""onnxruntime's optimised-graph cache beside a bundle (CPU): same outputs, rebuilt when damaged.

On the tests' tiny model (tests/fixtures/tiny_models.py): the cache's mechanism does not depend on the model's size.
"""
import glob
import os
import shutil

import numpy as np
from conftest import tiny_bundle

from runtime.backends import load_part
from runtime.bundle.manifest import load_manifest


def test_the_optimised_graph_is_saved_once_then_loaded_and_gives_the_same_outputs(tiny_bundles, tmp_path):
    bundle = str(tmp_path / "s4")
    shutil.copytree(str(tiny_bundle(tiny_bundles, 4)), bundle)
    shutil.rmtree(os.path.join(bundle, ".ort-opt"), ignore_errors=True)
    manifest = load_manifest(bundle)
    x = np.random.RandomState(0).rand(2, 3, 16, 16).astype(np.float32)
    first = load_part(manifest, "head", "onnx", "cpu", threads=1)
    assert first.optimised == "saved"
    second = load_part(manifest, "head", "onnx", "cpu", threads=1)
    assert second.optimised == "loaded"
    np.testing.assert_array_equal(first.run(x), second.run(x))
    cached = glob.glob(os.path.join(bundle, ".ort-opt", "head.*.onnx"))
    assert len(cached) == 1 and os.path.isfile(cached[0] + ".sha256")
    with open(cached[0], "r+b") as f:  # damage it: the sha256 beside it no longer matches
        f.seek(os.path.getsize(cached[0]) // 2)
        f.write(b"\xff" * 64)
    third = load_part(manifest, "head", "onnx", "cpu", threads=1)
    assert third.optimised == "saved"  # made again from the verified head, not loaded
    np.testing.assert_array_equal(first.run(x), third.run(x))
    manifest.verify_files()  # the bundle's own files are untouched


def test_a_read_only_bundle_loads_without_a_cache(tiny_bundles, tmp_path):
    bundle = str(tmp_path / "s3")
    shutil.copytree(str(tiny_bundle(tiny_bundles, 3)), bundle)
    shutil.rmtree(os.path.join(bundle, ".ort-opt"), ignore_errors=True)
    os.chmod(bundle, 0o555)
    try:
        if os.access(bundle, os.W_OK):  # root ignores the mode: make the cache path unusable instead
            open(os.path.join(bundle, ".ort-opt"), "w").close()
        tail = load_part(load_manifest(bundle), "tail", "onnx", "cpu", threads=1)
        assert tail.optimised is None
        assert tail.run(np.zeros((1, 8, 16, 16), np.float32)).shape == (1, 10)
    finally:
        os.chmod(bundle, 0o755)


def test_onnxruntime_threads_do_not_spin_wait_unless_asked(tiny_bundles, monkeypatch):
    """Spin-waiting intra-op threads take cores from other work (docs/BENCHMARKS.md): off by default, on with
    EDGESPLIT_ORT_SPIN=1, in the session onnxruntime really built."""
    from runtime.backends.ort import SPIN_ENV
    manifest = load_manifest(str(tiny_bundle(tiny_bundles, 4)))
    key = "session.intra_op.allow_spinning"
    monkeypatch.delenv(SPIN_ENV, raising=False)
    head = load_part(manifest, "head", "onnx", "cpu", 2)
    assert head.session.get_session_options().get_session_config_entry(key) == "0"
    monkeypatch.setenv(SPIN_ENV, "1")
    head = load_part(manifest, "head", "onnx", "cpu", 2)
    assert head.session.get_session_options().get_session_config_entry(key) == "1"
