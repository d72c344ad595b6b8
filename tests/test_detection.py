"""Detectors that torch.fx cannot trace whole, split inside their backbone (``--trace-module backbone``).

torchvision's RetinaNet and SSDlite at a small input, nothing downloaded: RetinaNet at random init (its frozen batch
norms keep their init, so activations reach the hundreds), SSDlite with its batch norms calibrated to a trained
network's scale (at random init its activations fade to 1e-13).  RetinaNet's backbone (ResNet-50 body + FPN) is cut where the body's three
feature maps enter the FPN (a boundary of three tensors) and returns the FPN's five levels; its raw outputs after
a real round trip through serve-cloud are compared with the unsplit backbone's.  SSDlite's is cut in its extra
layers, across the feature pyramid.  With ``--postprocess`` the detector's own heads, anchors and NMS run on the
cloud after the tail (tests/fixtures/tiny_models.py's retinanet_boxes, fcos_boxes and ssdlite_boxes: detectors
whose class logits are spread as a trained one's, so there are boxes to compare): verified box by box against the
whole detector's forward, and a real run through serve-cloud scores mAP@0.5 against the unsplit detector's own
boxes.
"""
import json

import numpy as np
import pytest
import torch
from cloud_server import ServerProcess
from conftest import run_cli

from runtime.backends import load_part
from runtime.bundle.manifest import load_manifest
from runtime.edge.client import CloudConnection

RETINANET = "torchvision:retinanet_resnet50_fpn"
SSDLITE = "torchvision:ssdlite320_mobilenet_v3_large"
SHAPE = "3,128,128"


def layers(model, *args):
    proc = run_cli("layers", "--model", model, "--trace-module", "backbone", "--input-shape", SHAPE, "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def fpn_cut(points):
    """The cut where the body's three feature maps (C3, C4, C5) cross into the FPN."""
    return next(p for p in points if isinstance(p["index"], str) and p["name"] == "body.layer4.2"
                and [t["name"] for t in p["tensors"]] == ["body.layer2.3", "body.layer3.5", "body.layer4.2"])


def test_the_whole_detector_is_refused_with_the_way_out_named():
    proc = run_cli("layers", "--model", RETINANET, "--input-shape", SHAPE)
    assert proc.returncode == 1
    line = proc.stderr.strip().splitlines()[-1]
    assert "cannot trace the model into a graph with torch.fx" in line and "--trace-module backbone" in line, line


def test_a_module_that_is_not_there_is_one_line_listing_the_children():
    proc = run_cli("layers", "--model", RETINANET, "--trace-module", "neck", "--input-shape", SHAPE)
    assert proc.returncode == 1
    line = proc.stderr.strip().splitlines()[-1]
    assert line == ("error: --trace-module neck: torchvision:retinanet_resnet50_fpn has no such submodule; its "
                    "children: backbone, anchor_generator, head, transform"), line


def test_the_backbones_offer_single_points_and_cuts_across_the_feature_pyramid():
    retina = layers(RETINANET, "--max-tensors", 3)
    assert retina["model"] == "torchvision-retinanet_resnet50_fpn-backbone"
    singles = [p for p in retina["points"] if isinstance(p["index"], int)]
    assert [p["name"] for p in singles][:5] == ["input", "body.conv1", "body.bn1", "body.relu", "body.maxpool"]
    last = singles[-1]
    assert [(t["name"], t["shape"]) for t in last["tensors"]] == [
        ("output_0", [256, 16, 16]), ("output_1", [256, 8, 8]), ("output_2", [256, 4, 4]), ("p6", [256, 2, 2]),
        ("p7", [256, 1, 1])]
    cut = fpn_cut(retina["points"])
    assert [t["shape"] for t in cut["tensors"]] == [[512, 16, 16], [1024, 8, 8], [2048, 4, 4]]
    ssd = layers(SSDLITE, "--max-tensors", 6)
    assert ssd["model"] == "torchvision-ssdlite320_mobilenet_v3_large-backbone"
    assert len(ssd["points"][-1]["tensors"]) == 6  # six feature maps for its heads
    extras = [p for p in ssd["points"] if isinstance(p["index"], str) and p["name"].startswith("extra.")]
    assert extras and max(len(p["tensors"]) for p in extras) == 6


@pytest.fixture(scope="module")
def retina_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("detection")
    cut = fpn_cut(layers(RETINANET, "--max-tensors", 3)["points"])["index"]
    proc = run_cli("export", "--model", RETINANET, "--trace-module", "backbone", "--input-shape", SHAPE,
                   "--split", cut, "--random-init", "--formats", "onnx", "--artifacts", root)
    assert proc.returncode == 0, proc.stderr
    return root, cut


def test_the_fpn_cut_exports_and_verifies_every_crossing_tensor_and_every_level(retina_store):
    root, cut = retina_store
    manifest = load_manifest(str(root / "torchvision-retinanet_resnet50_fpn-backbone-s{}".format(cut)))
    assert [t["source"] for t in manifest.boundaries] == ["body.layer2.3", "body.layer3.5", "body.layer4.2"]
    assert [t["name"] for t in manifest.outputs] == ["output_0", "output_1", "output_2", "p6", "p7"]
    ver = manifest["verification"]
    assert ver["meaningful"], ver["reason"]
    worst = {}
    for r in ver["results"]:
        assert r["passed"]
        worst[r["tensor"]] = max(worst.get(r["tensor"], 0.0), r["max_rel_diff"])
    assert set(worst) == {"boundary_0", "boundary_1", "boundary_2", "output_0", "output_1", "output_2", "p6", "p7"}
    assert max(worst.values()) < 1e-4  # float32 reordering only
    assert manifest["model"]["source"] == RETINANET + " --trace-module backbone"


def test_raw_outputs_after_a_round_trip_match_the_unsplit_backbone(retina_store):
    """The head run here (onnxruntime), its three tensors sent in one INFER, the five levels back in one RESULT."""
    import torchvision
    root, cut = retina_store
    manifest = load_manifest(str(root / "torchvision-retinanet_resnet50_fpn-backbone-s{}".format(cut)))
    torch.manual_seed(0)  # the exporter's random init
    backbone = torchvision.models.get_model("retinanet_resnet50_fpn", weights=None, weights_backbone=None).eval()
    backbone = backbone.backbone
    x = np.random.RandomState(3).randn(2, 3, 128, 128).astype(np.float32)
    with torch.no_grad():
        want = [t.numpy() for t in backbone(torch.from_numpy(x)).values()]
    head = load_part(manifest, "head")
    boundary = head.run(x)
    assert isinstance(boundary, tuple) and len(boundary) == 3
    server = ServerProcess(root)
    try:
        conn = CloudConnection(server.address)
        try:
            welcome = conn.hello({"role": "edge", "model": manifest.model_id, "split": cut, "bundle_id": None})
            assert welcome["bundle_id"] == manifest.bundle_id
            frame, sent, _ = conn.infer(boundary)
        finally:
            conn.close()
    finally:
        assert server.stop() == 0, server.log_text()
    assert sent > sum(b.nbytes for b in boundary)
    got = frame.array
    assert isinstance(got, tuple) and [g.shape for g in got] == [w.shape for w in want]
    for g, w in zip(got, want):
        assert np.abs(g - w).max() <= 1e-4 * np.abs(w).max(), "level differs from the unsplit backbone"


def test_ssdlite_is_cut_across_its_feature_pyramid(tmp_path):
    """At torchvision's random init SSDlite's activations fade to 1e-13 and verification could not tell a right
    export from a wrong one (the manifest would say so); its BatchNorms calibrated on a batch restore a trained
    network's scale (tests/fixtures/calibrated.py)."""
    from calibrated import calibrated_state
    weights = tmp_path / "ssdlite-backbone.pth"
    torch.save(calibrated_state("ssdlite320_mobilenet_v3_large", (3, 128, 128), seed=3, module="backbone"),
               str(weights))
    ssd = layers(SSDLITE, "--max-tensors", 6)
    cut = next(p for p in ssd["points"] if isinstance(p["index"], str) and p["name"] == "extra.1.0")
    assert len(cut["tensors"]) == 4  # two feature maps already made for the heads, two more in flight
    proc = run_cli("export", "--model", SSDLITE, "--trace-module", "backbone", "--input-shape", SHAPE, "--split",
                   cut["index"], "--weights", weights, "--formats", "onnx", "--artifacts", tmp_path)
    assert proc.returncode == 0, proc.stderr
    manifest = load_manifest(str(tmp_path / "torchvision-ssdlite320_mobilenet_v3_large-backbone-s{}".format(
        cut["index"])))
    assert len(manifest.boundaries) == 4 and len(manifest.outputs) == 6
    ver = manifest["verification"]
    assert ver["meaningful"], ver["reason"]
    assert all(r["passed"] for r in ver["results"]) and {r["tensor"] for r in ver["results"]} == {
        "boundary_0", "boundary_1", "boundary_2", "boundary_3"} | {"output_{}".format(i) for i in range(6)}
    assert manifest["input"]["preprocess"]["mean"] == [0.5, 0.5, 0.5]  # its own transform's normalisation


def test_a_block_fx_cannot_trace_into_is_called_whole_with_leaf_module(tmp_path):
    """tests/fixtures/tiny_models.py's chunky: blocks that iterate over their tensor's chunks, as YOLOv8's C2f."""
    refused = run_cli("layers", "--model", "tiny_models:chunky")
    assert refused.returncode == 1 and "--leaf-module CLASS" in refused.stderr.strip().splitlines()[-1]
    listed = run_cli("layers", "--model", "tiny_models:chunky", "--leaf-module", "ChunkBlock", "--json")
    assert listed.returncode == 0, listed.stderr
    names = [p["name"] for p in json.loads(listed.stdout)["points"]]
    assert names == ["input", "0", "1", "2", "3", "4", "5"]  # each block whole, a point between them
    proc = run_cli("export", "--model", "tiny_models:chunky", "--leaf-module", "ChunkBlock", "--split", 2,
                   "--random-init", "--artifacts", tmp_path)
    assert proc.returncode == 0, proc.stderr
    manifest = load_manifest(str(tmp_path / "tiny_models-chunky-s2"))
    assert all(r["passed"] for r in manifest["verification"]["results"])
    assert manifest["model"]["notes"].endswith("; traced with ChunkBlock called whole")
    wrong = run_cli("layers", "--model", "tiny_models:chunky", "--leaf-module", "C2f")
    assert wrong.returncode == 1
    assert wrong.stderr.strip().splitlines()[-1] == (
        "error: --leaf-module C2f: the model has no module of that class; its classes: AdaptiveAvgPool2d, "
        "ChunkBlock, Conv2d, Flatten, Linear, Sequential")


BOXES = "tiny_models:retinanet_boxes"


@pytest.fixture(scope="module")
def boxes_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("boxes")
    proc = run_cli("export", "--model", BOXES, "--postprocess", "--split", 7, "--random-init", "--artifacts", root)
    assert proc.returncode == 0, proc.stderr
    assert "detections (box level, against the whole detector)" in proc.stdout
    return root, load_manifest(str(root / "tiny_models-retinanet_boxes-s7"))


def test_a_detector_split_in_its_backbone_outputs_its_own_boxes_verified_box_by_box(boxes_store):
    _, manifest = boxes_store
    assert [(t["name"], t["shape"], t["dtype"]) for t in manifest.outputs] == [
        ("boxes", [None, 50, 4], "float32"), ("scores", [None, 50], "float32"), ("labels", [None, 50], "int64")]
    post = manifest["output"]["postprocess"]
    assert post["kind"] == "detections" and post["by"] == "RetinaNet.postprocess_detections"
    assert post["detections_per_img"] == 50 and post["score_thresh"] == 0.05
    assert sorted(manifest.part("tail")["files"]) == ["torchscript"]  # NMS: TorchScript only
    assert sorted(manifest.part("head")["files"]) == ["onnx", "torchscript"]
    ver = manifest["verification"]
    assert ver["meaningful"], ver["reason"]
    found = [r for r in ver["results"] if r["tensor"] == "detections"]
    assert len(found) == 4  # two head formats x batches 1 and 4
    for r in found:
        assert r["passed"] and r["detections_checked"] >= 49 * r["batch_size"]
        assert r["detections_matched"] == r["detections_checked"]
        assert r["max_abs_diff"] < 0.01 and r["max_score_diff"] < 1e-4  # pixels; float32 reordering only


def test_the_boxes_after_a_round_trip_score_full_map_against_the_whole_detector(boxes_store, tmp_path):
    """Ground truth = the unsplit detector's own detections on the same images: a split that computes what the
    detector computes scores mAP@0.5 of 1."""
    from tiny_models import retinanet_boxes

    from exporter.models.detection import Reference
    from runtime.edge.data import preprocess_batch
    root, manifest = boxes_store
    images = np.random.RandomState(5).randint(0, 256, size=(6, 128, 128, 3)).astype(np.uint8)
    torch.manual_seed(0)  # the exporter's random init
    detector = retinanet_boxes().eval()
    x = torch.from_numpy(preprocess_batch(images, manifest["input"]["preprocess"]))
    boxes, scores, labels = Reference(detector, detector.transform.image_mean, detector.transform.image_std,
                                      128, 128)(x)
    keep = scores.numpy() > 0.5  # the confident ones as ground truth
    truth = np.where(keep, labels.numpy(), -1)
    assert keep.sum() > 20
    data = tmp_path / "truth.npz"
    np.savez(str(data), x=images, y=truth, boxes=boxes.numpy())
    server = ServerProcess(root)
    try:
        report = tmp_path / "report.json"
        proc = run_cli("run-edge", "--cloud", server.address, "--model", BOXES, "--split", 7, "--dataset",
                       "npz:{}".format(data), "--batch-size", 3, "--report", report, "--cache", tmp_path / "cache")
    finally:
        assert server.stop() == 0, server.log_text()
    assert proc.returncode == 0, proc.stderr
    assert "Detections: 50.0 per image; mAP@0.5 over" in proc.stdout
    summary = json.loads(report.read_text())
    assert summary["task"] == "detection"
    assert summary["map50"] == pytest.approx(1.0, abs=1e-6) and summary["accuracy"] == summary["map50"]


@pytest.mark.parametrize("model,split,by", [
    ("tiny_models:fcos_boxes", 7, "FCOS.postprocess_detections"),  # per level, centerness in the score
    ("tiny_models:ssdlite_boxes", 33, "SSD.postprocess_detections"),  # one softmax over all anchors
])
def test_fcos_and_ssdlite_run_their_own_postprocessing_verified_box_by_box(tmp_path, model, split, by):
    proc = run_cli("export", "--model", model, "--postprocess", "--split", split, "--random-init", "--input-shape",
                   SHAPE, "--formats", "onnx,torchscript", "--artifacts", tmp_path)
    assert proc.returncode == 0, proc.stderr
    manifest = load_manifest(str(tmp_path / "{}-s{}".format(model.replace(":", "-"), split)))
    assert manifest["output"]["postprocess"]["by"] == by
    assert [t["name"] for t in manifest.outputs] == ["boxes", "scores", "labels"]
    assert manifest["verification"]["meaningful"], manifest["verification"]["reason"]
    found = [r for r in manifest["verification"]["results"] if r["tensor"] == "detections"]
    assert len(found) == 4
    for r in found:
        assert r["passed"] and r["detections_checked"] >= 40 * r["batch_size"]
        assert r["detections_matched"] == r["detections_checked"] and r["max_score_diff"] < 1e-4


def test_postprocess_is_refused_in_one_line_where_it_cannot_run(tmp_path):
    classifier = run_cli("export", "--model", "tiny_models:classifier", "--postprocess", "--split", 2,
                         "--random-init", "--artifacts", tmp_path)
    assert classifier.returncode == 1
    assert classifier.stderr.strip().splitlines()[-1].startswith(
        "error: --postprocess runs the post-processing of torchvision's RetinaNet, FCOS and SSD detectors; the "
        "model is a")
    onnx_only = run_cli("export", "--model", BOXES, "--postprocess", "--split", 7, "--random-init", "--formats",
                        "onnx", "--artifacts", tmp_path)
    assert onnx_only.returncode == 1
    assert "--postprocess needs torchscript in --formats" in onnx_only.stderr.strip().splitlines()[-1]
    odd = run_cli("export", "--model", BOXES, "--postprocess", "--split", 7, "--random-init", "--input-shape",
                  "3,120,120", "--artifacts", tmp_path)
    assert odd.returncode == 1 and "multiples of 32" in odd.stderr.strip().splitlines()[-1]
    assert [p.name for p in tmp_path.iterdir()] == []  # nothing left behind


def test_map_counts_a_missed_box_and_a_false_one_as_pascal_voc_does():
    """One image, two ground-truth boxes of class 1: a detection on the first (score 0.9), a false one (0.8), none
    on the second: recall reaches 1/2 at precision 1, so AP = 0.5; class 2's lone false detection adds no class."""
    from runtime.edge.scoring import Detection
    scorer = Detection(has_truth=True)
    boxes = np.array([[[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30], [0, 0, 0, 0]]], dtype=np.float32)
    scores = np.array([[0.9, 0.8, 0.7, 0.0]], dtype=np.float32)
    labels = np.array([[1, 1, 2, -1]])
    truth_boxes = np.array([[[1, 1, 10, 10], [30, 0, 40, 10]]], dtype=np.float32)
    found, truths = scorer.add((boxes, scores, labels), (np.array([[1, 1]]), truth_boxes))
    assert found == [3] and truths == [2]
    summary = scorer.summary()
    assert summary["map50"] == pytest.approx(0.5) and summary["classes_with_truth"] == 1
