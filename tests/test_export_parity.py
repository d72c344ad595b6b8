"""Exported bundles reproduce the unsplit model: the seed's ResNet-50 at every split, torchvision models."""
import numpy as np
import pytest
import torch
import torchvision.models as tvm

from bundle_runner import run_bundle
from exporter.bundle import export_bundle
from exporter.cutpoints import TracedModel
from seed_reference import forward


@pytest.fixture(scope="module")
def reference(seed_weights):
    state = torch.load(seed_weights)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(42))
    with torch.no_grad():
        return x.numpy(), forward(state, x).numpy()


@pytest.mark.parametrize("split", list(range(23)))
def test_seed_resnet50_every_split_matches_an_independent_model(split, seed_bundles, reference):
    x, logits = reference
    root, manifests = seed_bundles
    manifest = manifests[split]
    path = str(root / "resnet50-s{}".format(split))
    assert manifest["split"]["index"] == split
    assert manifest["model"]["weights"]["random_init"] is False
    assert (manifest["parts"]["head"] is None) == (split == 0)
    assert (manifest["parts"]["tail"] is None) == (split == 22)
    assert all(r["passed"] for r in manifest["verification"]["results"])
    for fmt in ("onnx", "torchscript"):
        out = run_bundle(path, x, fmt)
        assert np.abs(out - logits).max() < 1e-3, fmt
        assert (out.argmax(1) == logits.argmax(1)).all(), fmt


TORCHVISION_CASES = [
    # (model, input shape, split points to export): a residual family and a mobile one
    ("resnet18", (3, 64, 64), [1, 4, 7, 12, 15]),
    ("mobilenet_v3_small", (3, 64, 64), [3, 7, 20, 40, 55]),
]


@pytest.mark.parametrize("name,shape,splits", TORCHVISION_CASES)
def test_torchvision_models_split_and_verify(name, shape, splits, tmp_path):
    torch.manual_seed(3)
    model = tvm.get_model(name, weights=None).eval()
    weights = tmp_path / "w.pth"
    torch.save(model.state_dict(), str(weights))
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model(x).numpy()
    n_points = len(TracedModel(model, shape).points)
    for split in splits + [n_points - 1]:
        assert split < n_points
        path, manifest = export_bundle("torchvision:" + name, str(split), weights=str(weights),
                                       input_shape=shape, out_dir=str(tmp_path / "out"))
        assert manifest["model"]["num_split_points"] == n_points
        for fmt in ("onnx", "torchscript"):
            out = run_bundle(path, x.numpy(), fmt)
            assert np.abs(out - ref).max() < 1e-3 * max(1.0, np.abs(ref).max()), (name, split, fmt)
            assert (out.argmax(1) == ref.argmax(1)).all()


def test_mobile_model_has_cut_points_inside_plain_blocks_but_not_inside_residual_ones():
    model = tvm.mobilenet_v3_small().eval()
    names = [p.name for p in TracedModel(model, (3, 64, 64)).points]
    blocks = [i for i in range(1, 12) if hasattr(model.features[i], "use_res_connect")]
    residual = [i for i in blocks if model.features[i].use_res_connect]
    plain = [i for i in blocks if not model.features[i].use_res_connect]
    assert residual and plain
    for i in residual:  # the skip connection keeps the block whole: only the point after it
        inside = [n for n in names if n.startswith("features.{}.".format(i))]
        assert inside == [] and "features.{}".format(i) in names, i
    for i in plain:  # no skip connection: its inner layers are valid points
        assert "features.{}.block.0.0".format(i) in names, i
