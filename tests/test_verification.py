"""Verification fails loudly on a wrong weight or a wrong split, with the max difference."""
import shutil

import onnx
import pytest
from onnx import numpy_helper

from exporter.bundle import export_bundle
from exporter.cutpoints import TracedModel
from exporter.errors import VerificationError
from exporter.verify import verify_bundle
from tiny_models import build


@pytest.fixture()
def tiny(tmp_path):
    model = build().eval()
    traced = TracedModel(model, build.input_shape)
    bundles = {k: export_bundle("tiny_models:build", str(k), random_init=True, out_dir=str(tmp_path))
               for k in (1, 2)}
    return model, traced, bundles


def test_a_changed_weight_fails_verification(tiny):
    model, traced, bundles = tiny
    path, manifest = bundles[2]
    tail = onnx.load(path + "/tail.onnx")
    init = tail.graph.initializer[0]
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.01, init.name))
    onnx.save(tail, path + "/tail.onnx")
    with pytest.raises(VerificationError, match=r"onnx split 2 batch 1: output differs .*max abs diff"):
        verify_bundle(path, manifest, model, traced.head(2), ["onnx"])
    verify_bundle(path, manifest, model, traced.head(2), ["torchscript"])  # the untouched format still passes


def test_a_head_from_another_split_fails_verification(tiny):
    model, traced, bundles = tiny
    (path1, _), (path2, manifest2) = bundles[1], bundles[2]
    for name in ("head.onnx", "head.pt"):  # conv output (split 1) where relu output (split 2) is expected
        shutil.copy(path1 + "/" + name, path2 + "/" + name)
    for fmt in ("onnx", "torchscript"):
        with pytest.raises(VerificationError, match=fmt + r" split 2 batch 1: boundary differs"):
            verify_bundle(path2, manifest2, model, traced.head(2), [fmt])


def test_real_exports_pass_with_margin(tiny):
    _, _, bundles = tiny
    for _, manifest in bundles.values():
        diffs = [r["max_abs_diff"] for r in manifest["verification"]["results"]]
        assert max(diffs) < manifest["verification"]["atol"] / 10
