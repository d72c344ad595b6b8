"""Cut points inside modules that compute something themselves, and the points' names (issue: models beyond one
tensor, point 1): a transformer is cut after each encoder block, end to end through serve-cloud and run-edge, while
the seed's ResNet-50 keeps exactly its 23 points (tests/test_seed_model.py)."""
import json

import numpy as np
import pytest
import torch
from bundle_runner import run_bundle
from cloud_server import ServerProcess
from conftest import run_cli
from tiny_models import vit

from exporter.bundle import select_point
from exporter.cutpoints import TracedModel
from exporter.errors import ExportError
from runtime.edge.data import preprocess_batch

VIT = "tiny_models:vit"
BLOCKS = ["encoder.layers.encoder_layer_{}".format(i) for i in range(4)]


@pytest.fixture(scope="module")
def points():
    proc = run_cli("layers", "--model", VIT, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["points"]


def test_a_vit_is_cut_after_each_encoder_block_and_nowhere_inside_one(points):
    blocks = [p for p in points if p["of"] == "EncoderBlock"]
    assert [p["name"] for p in blocks] == BLOCKS
    assert all(p["shape"] == [17, 64] for p in blocks)  # 16 patches + the class token, hidden 64
    assert [p["index"] for p in blocks] == list(range(blocks[0]["index"], blocks[0]["index"] + 4))  # back to back
    names = [p["name"] for p in points]
    # inside a block one tensor crosses after its first residual add, but that is the block's own step
    assert not [n for n in names if n.startswith(BLOCKS[0] + ".")]
    assert names[-3:] == ["encoder", "encoder.ln[:, 0]", "heads"]  # the class token is named as written
    assert [p["of"] for p in points[-3:]] == ["Encoder", "operator.getitem", "Sequential"]


def test_block_names_end_a_block_not_its_last_relu():
    """torchvision's BasicBlock ends with a ReLU module: the point is named by the block, the ReLU still selects it."""
    import torchvision.models as tvm
    traced = TracedModel(tvm.resnet18(weights=None), (3, 64, 64))
    names = [p.name for p in traced.points]
    assert "layer1.0" in names and "layer1.0.relu" not in names
    point = traced.points[names.index("layer1.1")]
    assert point.of == "BasicBlock" and point.ends == ("layer1", "layer1.1", "layer1.1.relu")
    assert select_point(traced, "layer1.1.relu") is point and select_point(traced, "layer1") is point
    with pytest.raises(ExportError, match="'layer1.0.conv1' is not a valid split point"):
        select_point(traced, "layer1.0.conv1")  # the block's input is still needed by its skip


def test_a_vit_split_between_blocks_round_trips_through_serve_cloud(points, tmp_path):
    """Exported by name at the second block; verified; head + tail in onnxruntime and TorchScript equal the unsplit
    model; run-edge against serve-cloud predicts what the unsplit model predicts."""
    store = tmp_path / "store"
    proc = run_cli("export", "--model", VIT, "--split", BLOCKS[1], "--random-init", "--out", store)
    assert proc.returncode == 0, proc.stderr
    index = [p["name"] for p in points].index(BLOCKS[1])
    bundle = store / "tiny_models-vit-s{}".format(index)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["split"]["name"] == BLOCKS[1] and manifest["boundary"]["shape"] == [None, 17, 64]
    assert all(r["passed"] for r in manifest["verification"]["results"])

    rng = np.random.RandomState(3)
    # a colour per image with noise on it: the toy transformer's class token tells those apart (plain noise it maps
    # to one or two classes)
    colours = rng.randint(0, 256, size=(60, 1, 1, 3))
    images = np.clip(colours + rng.randint(-40, 40, size=(60, 32, 32, 3)), 0, 255).astype(np.uint8)
    x = preprocess_batch(images, manifest["input"]["preprocess"])
    torch.manual_seed(0)
    with torch.no_grad():
        reference = vit()(torch.from_numpy(x)).numpy()  # the same random init as the export's
    for fmt in ("onnx", "torchscript"):
        out = run_bundle(str(bundle), x, fmt)
        assert np.abs(out - reference).max() < 1e-4 * np.abs(reference).max(), fmt
    top2 = np.sort(reference, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 1e-3 * np.abs(reference).max()  # no near-ties, which rounding could flip
    images, labels = images[clear], reference.argmax(1)[clear]
    assert len(labels) > 40 and len(set(labels.tolist())) > 3  # the logits say something
    data = tmp_path / "vit.npz"
    np.savez(str(data), x=images, y=labels)

    server = ServerProcess(store)
    try:
        report = tmp_path / "r.json"
        proc = run_cli("run-edge", "--cloud", server.address, "--artifacts", store, "--model", "tiny_models-vit",
                       "--split", index, "--dataset", "npz:{}".format(data), "--batch-size", 4, "--report", report)
        assert proc.returncode == 0, proc.stderr
        r = json.loads(report.read_text())
        assert r["predictions"] == labels.tolist() and r["split"] == index
    finally:
        assert server.stop() == 0, server.log_text()


def layers_error(tmp_path, name, forward):
    """The last line of `cli.py layers` for a model whose forward (on a 3x8x8 input, with ``self.conv``) is
    ``forward``, after checking that it failed."""
    (tmp_path / (name + ".py")).write_text(
        "import torch\nfrom torch import nn\n\n\nclass M(nn.Module):\n    def __init__(self):\n"
        "        super().__init__()\n        self.conv = nn.Conv2d(3, 4, 3)\n\n    def forward(self, x):\n"
        "        {}\n\n\ndef build():\n    return M()\n\n\nbuild.input_shape = (3, 8, 8)\n".format(forward))
    proc = run_cli("layers", "--model", name + ":build", env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode != 0
    return proc.stderr.strip().splitlines()[-1]


def test_the_trace_error_names_the_real_cause(tmp_path):
    """A module created inside forward (as the seed's upstream ResNet does) is named as the cause, not control
    flow."""
    line = layers_error(tmp_path, "made_in_forward", "return nn.ReLU(inplace=True)(self.conv(x))")
    assert "not installed as a submodule" in line and "create it in __init__" in line, line
    assert "control flow" not in line


def test_sizes_read_from_a_shape_are_constants_of_the_export():
    """The segmenter reads its input's height and width first and uses them last: folded to (32, 32), the input no
    longer crosses every point; the batch size (read as x.shape[0]) stays computed, so any batch still runs."""
    from tiny_models import segmenter
    traced = TracedModel(segmenter(), (3, 32, 32))
    assert [p.name for p in traced.points] == ["input", "backbone.0", "backbone.1", "backbone.2", "backbone",
                                               "classifier", "interpolate"]
    assert traced.output_path == ("out",) and traced.points[-1].shape == (4, 32, 32)
    with torch.no_grad():
        x = torch.randn(5, 3, 32, 32)
        head, tail = traced.head(3), traced.tail(3)
        assert torch.allclose(tail(head(x)), segmenter()(x)["out"], atol=1e-6)


def test_batch_dependent_sizes_are_left_computed():
    from exporter.cutpoints import fold_static_sizes

    class Flat(torch.nn.Module):
        def forward(self, x):
            return x.reshape(x.shape[0], -1) * x.shape[1]

    gm = torch.fx.symbolic_trace(Flat())
    assert fold_static_sizes(gm, (3, 4)) == 1  # x.shape[1]; not x.shape[0]
    assert gm(torch.ones(6, 3, 4)).shape == (6, 12) and float(gm(torch.ones(2, 3, 4))[0, 0]) == 3.0


def test_a_segmentation_models_dict_output_exports_and_verifies(tmp_path):
    from tiny_models import segmenter
    proc = run_cli("export", "--model", "tiny_models:segmenter", "--split", "backbone", "--random-init", "--out",
                   tmp_path)
    assert proc.returncode == 0, proc.stderr
    bundle = tmp_path / "tiny_models-segmenter-s4"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["output"]["shape"] == [None, 4, 32, 32] and manifest["boundary"]["shape"] == [None, 16, 8, 8]
    assert all(r["passed"] for r in manifest["verification"]["results"])
    x = np.random.RandomState(0).randn(3, 3, 32, 32).astype(np.float32)
    with torch.no_grad():
        reference = segmenter()(torch.from_numpy(x))["out"].numpy()
    for fmt in ("onnx", "torchscript"):
        assert np.abs(run_bundle(str(bundle), x, fmt) - reference).max() < 1e-5, fmt


def test_an_output_of_tensors_nested_in_containers_is_refused_in_one_line(tmp_path):
    line = layers_error(tmp_path, "nested_outputs", "y = self.conv(x)\n        return {'out': y, 'more': [y, y * 2]}")
    assert "the model's output is a dict of 2 holding list; a tail returns tensors (one, or a flat dict" in line, line


def test_layers_lists_cuts_of_several_tensors_between_the_seed_points():
    """`layers --max-tensors 2`: the seed's 23 points keep their numbers, with cuts inside the residual blocks
    (the block's input and the branch so far) numbered K.J between them."""
    proc = run_cli("layers", "--max-tensors", 2, "--json")
    assert proc.returncode == 0, proc.stderr
    cuts = json.loads(proc.stdout)["points"]
    singles = [c for c in cuts if isinstance(c["index"], int)]
    assert [c["index"] for c in singles] == list(range(23)) and not any(c.get("tensors") for c in singles)
    multi = [c for c in cuts if not isinstance(c["index"], int)]
    assert multi and all(len(c["tensors"]) == 2 for c in multi)
    first = multi[0]
    assert first["index"] == "3.1" and cuts.index(first) == 4  # right after point 3
    assert [(t["name"], t["shape"]) for t in first["tensors"]] == [("conv1", [64, 32, 32]),
                                                                   ("conv2_x.0.residual_function.0", [64, 32, 32])]
    assert first["bytes_per_sample"] == 2 * 64 * 32 * 32 * 4
    for position, cut in enumerate(cuts):  # each numbered after the single point before it, J counting from 1
        if cut in multi:
            before = [c for c in cuts[:position] if isinstance(c["index"], int)][-1]["index"]
            run = [c for c in cuts[cuts.index(singles[before]):position + 1] if c in multi]
            assert cut["index"] == "{}.{}".format(before, len(run)), cut["index"]
