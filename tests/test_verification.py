"""Verification fails loudly on a wrong weight or a wrong split, with the max difference, at every scale."""
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from tiny_models import build

from exporter.bundle import export_bundle
from exporter.cutpoints import TracedModel
from exporter.errors import VerificationError
from exporter.options import ExportOptions
from exporter.verify import compare, failure_message, verify_bundle


@pytest.fixture()
def tiny(tmp_path):
    model = build().eval()
    traced = TracedModel(model, build.input_shape)
    bundles = {k: export_bundle("tiny_models:build", str(k), ExportOptions(random_init=True, out_dir=str(tmp_path)))
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


# ---- the rule itself, on arrays shaped like the cases that motivated it ----

def _deep_activation(seed=0):
    """A post-ReLU activation of trained scale: many exact zeros and small values, a few reaching ~15."""
    rng = np.random.RandomState(seed)
    return np.maximum(rng.standard_normal((4, 64, 8, 8)) * 3, 0).astype(np.float32) * (rng.rand(4, 64, 8, 8) < 0.5)


def test_float_noise_on_a_large_activation_passes_where_the_elementwise_rule_refused():
    ref = _deep_activation()
    noisy = ref + np.random.RandomState(1).uniform(-3e-4, 3e-4, ref.shape).astype(np.float32)  # ~2e-5 of max
    elementwise = np.all(np.abs(noisy - ref) <= 1e-4 + 1e-3 * np.abs(ref))
    assert not elementwise  # what refused splits 16 and 19 of BN-calibrated weights
    result = compare(noisy, ref, 1e-4, 1e-3)
    assert result["passed"] and result["degenerate"] is None
    assert result["max_rel_diff"] == pytest.approx(result["max_abs_diff"] / np.abs(ref).max())
    assert result["tolerance"] == pytest.approx(1e-4 + 1e-3 * np.abs(ref).max())


def test_a_wrong_tensor_fails_at_any_scale():
    for scale in (1e-2, 1.0, 1e6):
        ref = _deep_activation() * scale
        wrong = ref.copy()
        wrong[0, 0] += 0.01 * np.abs(ref).max()  # a 1% error on one channel
        result = compare(wrong, ref, 1e-4, 1e-3)
        assert not result["passed"] and result["max_rel_diff"] == pytest.approx(0.01, rel=1e-3), scale


def test_top1_must_agree_where_the_reference_margin_is_clear_and_near_ties_may_flip():
    ref = np.array([[5.0, 1.0, 0.0], [2.0, 2.0 + 1e-6, 0.0]], dtype=np.float32)
    tie_flipped = ref.copy()
    tie_flipped[1, 0] += 2e-6  # float noise breaks a tie the other way: fine
    result = compare(tie_flipped, ref, 1e-4, 1e-3, classes=True)
    assert result["passed"] and (result["top1_checked"], result["top1_agreed"]) == (1, 1)
    swapped = ref.copy()
    swapped[0] = [4.9, 5.0, 0.0]  # within a loose tolerance elementwise, but a clear top-1 changed
    result = compare(swapped, ref, 1e-4, 0.05, classes=True)
    assert not result["passed"] and "top-1 class differs on 1 of the 1" in result["reason"]


@pytest.mark.parametrize("ref,reason,a_constant_passes", [
    (np.zeros((4, 10), np.float32), "all zero", True),
    (np.full((4, 10), 0.25, np.float32), "constant", True),
    (np.random.RandomState(0).standard_normal((4, 10)).astype(np.float32) * 4e-14, "within twice the tolerance",
     True),  # efficientnet_b0's logits at torchvision's random init
    (np.tile(np.arange(10, dtype=np.float32), (4, 1)), "the same for every sample", False),
])
def test_degenerate_references_are_named(ref, reason, a_constant_passes):
    result = compare(ref, ref, 1e-4, 1e-3, classes=True)
    assert result["passed"] and reason in result["degenerate"]
    constant = np.full_like(ref, (ref.max() + ref.min()) / 2)
    assert compare(constant, ref, 1e-4, 1e-3)["passed"] == a_constant_passes  # why it checks nothing


def test_the_failure_line_names_the_relative_error_and_what_to_do():
    ref = _deep_activation()
    slightly = compare(ref * (1 + 3e-3), ref, 1e-4, 1e-3)
    message = failure_message("onnx split 16 batch 1: boundary", slightly, 1e-4, 1e-3)
    assert "\n" not in message and "relative 3.00e-03" in message and "loosen --atol/--rtol" in message
    badly = compare(ref * 1.5, ref, 1e-4, 1e-3)
    assert "report a bug" in failure_message("x", badly, 1e-4, 1e-3) and "loosen" not in failure_message(
        "x", badly, 1e-4, 1e-3)


# ---- mistakes on the realistic ResNet-50 (seed_weights are BN-calibrated) ----

@pytest.fixture(scope="module")
def seed_model(seed_weights):
    from exporter.bundle import prepare_model
    from exporter.models.configs import resolve
    model, _, _ = prepare_model(resolve("resnet50"), seed_weights, False)
    return model, TracedModel(model, (3, 32, 32))


def _copy_bundle(root, split, tmp_path):
    path = str(tmp_path / "resnet50-s{}".format(split))
    shutil.copytree(str(root / "resnet50-s{}".format(split)), path)
    return path


@pytest.mark.parametrize("split", [6, 13, 16, 19])
def test_realistic_resnet50_a_head_from_the_neighbouring_split_fails(split, seed_bundles, seed_model, tmp_path):
    root, manifests = seed_bundles
    model, traced = seed_model
    path = _copy_bundle(root, split, tmp_path)
    for name in ("head.onnx", "head.pt"):  # the same boundary shape, one block earlier
        shutil.copy(str(root / "resnet50-s{}".format(split - 1) / name), path + "/" + name)
    for fmt in ("onnx", "torchscript"):
        with pytest.raises(VerificationError, match=fmt + r" split {} batch 1: boundary differs.*report a bug"
                           .format(split)):
            verify_bundle(path, manifests[split], model, traced.head(split), [fmt])


@pytest.mark.parametrize("split", [6, 16])
def test_realistic_resnet50_a_changed_weight_or_a_tail_of_other_weights_fails(split, seed_bundles, seed_model,
                                                                              tmp_path):
    root, manifests = seed_bundles
    model, traced = seed_model
    path = _copy_bundle(root, split, tmp_path)
    verify_bundle(path, manifests[split], model, traced.head(split), ["onnx", "torchscript"])  # as exported: passes
    tail = onnx.load(path + "/tail.onnx")
    init = next(i for i in tail.graph.initializer if len(i.dims) == 4)  # one conv's (BN-folded) weights, +1%
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.01, init.name))
    onnx.save(tail, path + "/tail.onnx")
    with pytest.raises(VerificationError, match=r"onnx split {} batch 1: output differs".format(split)):
        verify_bundle(path, manifests[split], model, traced.head(split), ["onnx"])
    from seed_reference import make_state_dict
    other = tmp_path / "other.pth"
    torch.save(make_state_dict(seed=99), str(other))
    other_path, _ = export_bundle("resnet50", str(split), ExportOptions(weights=str(other), out_dir=str(tmp_path / "other"), formats=("torchscript",)))
    shutil.copy(other_path + "/tail.pt", path + "/tail.pt")
    with pytest.raises(VerificationError, match=r"torchscript split {} batch 1: output differs.*report a bug"
                       .format(split)):
        verify_bundle(path, manifests[split], model, traced.head(split), ["torchscript"])
