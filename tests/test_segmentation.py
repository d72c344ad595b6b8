"""A segmentation model split and run end to end: masks as labels, pixel accuracy and mean IoU in the report
(runtime/edge/scoring.py), checked against the tests' own count on the unsplit model's output."""
import json

import numpy as np
import pytest
import torch
from cloud_server import ServerProcess
from conftest import SEED_REPORT, TINY_ID, assert_seed_report_first, run_cli
from tiny_models import segmenter

from runtime.edge import scoring
from runtime.edge.data import preprocess_batch
from runtime.errors import UserError

SEGMENTER = "tiny_models:segmenter"
SEGMENTER_ID = "tiny_models-segmenter"


def reference_scores(masks, predictions, classes):
    """Pixel accuracy and mean IoU counted the plain way, class by class."""
    keep = masks != scoring.IGNORE
    accuracy = (masks[keep] == predictions[keep]).mean()
    ious = []
    for c in range(classes):
        label, guess = (masks == c) & keep, (predictions == c) & keep
        union = (label | guess).sum()
        if union:
            ious.append((label & guess).sum() / float(union))
    return accuracy, float(np.mean(ious))


def test_the_scorer_counts_pixels_as_the_plain_count_does():
    rng = np.random.RandomState(0)
    output = rng.randn(6, 5, 7, 9).astype(np.float32)
    masks = rng.randint(0, 5, size=(6, 7, 9))
    masks[:, 0] = scoring.IGNORE
    masks[masks == 4] = 3  # class 4 only in predictions: its IoU is 0 and counts
    scorer = scoring.for_run([None, 5, 7, 9], masks)
    per_sample, counts = scorer.add(output[:4], masks[:4])
    scorer.add(output[4:], masks[4:])
    accuracy, miou = reference_scores(masks, output.argmax(1), 5)
    summary = scorer.summary()
    assert summary["accuracy"] == pytest.approx(accuracy) and summary["miou"] == pytest.approx(miou)
    assert counts == [7 * 9 - 9] * 4
    assert per_sample[0] == pytest.approx((masks[0, 1:] == output[0].argmax(0)[1:]).mean())


@pytest.mark.parametrize("output_shape,labels,message", [
    ([None, 10], np.zeros((3, 4, 4), np.int64), "masks fit a segmentation model"),
    ([None, 5, 4, 4], np.zeros(3, np.int64), "give masks: an npz whose 'y' is N x 4 x 4"),
    ([None, 5, 4, 4], np.zeros((3, 8, 8), np.int64), "labels are 8x8 masks, but the model outputs 5x4x4"),
    ([None, 5, 4, 4], np.full((3, 4, 4), 7), "mask value 7 is not a class id of this model (0..4) nor 255"),
])
def test_labels_that_do_not_fit_the_model_are_refused(output_shape, labels, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        scoring.for_run(output_shape, labels)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg-store")
    for split in ("3", "4"):
        proc = run_cli("export", "--model", SEGMENTER, "--split", split, "--random-init", "--out", root)
        assert proc.returncode == 0, proc.stderr
    return root


@pytest.fixture(scope="module")
def masks_npz(tmp_path_factory, store):
    """Images, and masks: the unsplit model's own per-pixel classes, with a tenth of the pixels relabelled (so the
    scores are not 1) and the first row ignored; pixels whose top two scores are near-ties are ignored too."""
    manifest = json.loads((store / (SEGMENTER_ID + "-s4") / "manifest.json").read_text())
    rng = np.random.RandomState(4)
    colours = rng.randint(0, 256, size=(40, 1, 1, 3))
    images = np.clip(colours + rng.randint(-60, 60, size=(40, 32, 32, 3)), 0, 255).astype(np.uint8)
    with torch.no_grad():
        out = segmenter()(torch.from_numpy(preprocess_batch(images, manifest["input"]["preprocess"])))["out"].numpy()
    masks = out.argmax(1)
    top2 = np.sort(out, axis=1)[:, -2:]
    masks[(top2[:, 1] - top2[:, 0]) < 1e-4 * np.abs(out).max()] = scoring.IGNORE
    flip = rng.rand(*masks.shape) < 0.1
    masks[flip & (masks != scoring.IGNORE)] = (masks[flip & (masks != scoring.IGNORE)] + 1) % 4
    masks[:, 0] = scoring.IGNORE
    path = tmp_path_factory.mktemp("seg-data") / "masks.npz"
    np.savez(str(path), x=images, y=masks.astype(np.uint8))
    return str(path), masks, out.argmax(1)


@pytest.mark.parametrize("split", [3, 4])
def test_run_edge_reports_pixel_accuracy_and_mean_iou(split, store, masks_npz, tmp_path):
    path, masks, predictions = masks_npz
    accuracy, miou = reference_scores(masks, predictions, 4)
    assert 0.8 < accuracy < 0.95
    server = ServerProcess(store)
    try:
        report = tmp_path / "r.json"
        proc = run_cli("run-edge", "--cloud", server.address, "--artifacts", store, "--model", SEGMENTER_ID,
                       "--split", split, "--dataset", "npz:" + path, "--batch-size", 8, "--report", report)
        assert proc.returncode == 0, proc.stderr
    finally:
        assert server.stop() == 0, server.log_text()
    assert_seed_report_first(proc.stdout, "{:.2f}".format(100 * accuracy))
    fifth = proc.stdout.splitlines()[4]
    assert fifth == "Mean IoU: {:.2f}% over 4 classes present (Accuracy above: pixel accuracy)".format(100 * miou)
    r = json.loads(report.read_text())
    assert r["task"] == "segmentation" and r["n"] == 40
    assert r["accuracy"] == pytest.approx(accuracy) and r["miou"] == pytest.approx(miou)
    assert r["labels"] == [int((m != scoring.IGNORE).sum()) for m in masks]  # labelled pixels per sample
    assert len(r["predictions"]) == 40 and all(0 <= p <= 1 for p in r["predictions"])


def test_masks_against_a_classifier_are_refused_in_one_line(tiny_bundles, tmp_path):
    data = tmp_path / "m.npz"
    np.savez(str(data), x=np.zeros((4, 16, 16, 3), np.uint8), y=np.zeros((4, 16, 16), np.uint8))
    server = ServerProcess(tiny_bundles)
    try:
        proc = run_cli("run-edge", "--cloud", server.address, "--artifacts", tiny_bundles, "--model", TINY_ID,
                       "--split", 2, "--dataset", "npz:{}".format(data))
    finally:
        assert server.stop() == 0, server.log_text()
    assert proc.returncode != 0 and not SEED_REPORT.search(proc.stdout)
    assert "masks fit a segmentation model" in proc.stderr.strip().splitlines()[-1], proc.stderr


AUX = "tiny_models:segmenter_aux"  # returns {"out": scores, "aux": scores}, as a model built with aux_loss
AUX_ID = "tiny_models-segmenter_aux"


@pytest.fixture(scope="module")
def aux_store(tmp_path_factory):
    """The segmenter with an auxiliary head at split 0 (all on the cloud), 2 (one tensor), 2.3 (two: the stem's
    features for the aux head, the main head's scores) and 3 (all on the edge), and its segments."""
    root = tmp_path_factory.mktemp("aux-store")
    for what in (("--split", "0"), ("--split", "2"), ("--split", "2.3"), ("--split", "3"), ("--segments",)):
        proc = run_cli("export", "--model", AUX, *what, "--random-init", "--out", root)
        assert proc.returncode == 0, proc.stderr
    return root


def test_a_model_of_two_outputs_is_exported_with_both_verified_one_by_one(aux_store):
    from runtime.bundle.manifest import load_manifest
    for split, boundary in (("0", ["boundary"]), ("2", ["boundary"]), ("2.3", ["boundary_0", "boundary_1"]),
                            ("3", ["boundary_0", "boundary_1"])):
        manifest = load_manifest(str(aux_store / "{}-s{}".format(AUX_ID, split)))
        assert manifest["schema_version"] == 2
        assert [(t["name"], t["shape"][1:], t["source"]) for t in manifest.outputs] == [
            ("out", [4, 32, 32], "interpolate"), ("aux", [4, 32, 32], "interpolate_1")]
        assert [t["name"] for t in manifest.boundaries] == boundary
        checked = {r["tensor"] for r in manifest["verification"]["results"]}
        assert checked == {"out", "aux"} | (set(boundary) if split != "0" else set()), split
        assert all(r["passed"] for r in manifest["verification"]["results"])
    segments = load_manifest(str(aux_store / (AUX_ID + "-segments")))
    assert {r["tensor"] for r in segments["verification"]["results"]} == {"out", "aux"}


@pytest.fixture(scope="module")
def aux_masks(tmp_path_factory, aux_store):
    """Images, and masks: the unsplit model's own per-pixel classes of its "out" (near-ties ignored)."""
    from tiny_models import segmenter_aux
    manifest = json.loads((aux_store / (AUX_ID + "-s2") / "manifest.json").read_text())
    rng = np.random.RandomState(5)
    images = rng.randint(0, 256, size=(24, 32, 32, 3)).astype(np.uint8)
    with torch.no_grad():
        out = segmenter_aux()(torch.from_numpy(preprocess_batch(images, manifest["input"]["preprocess"])))["out"]
    out = out.numpy()
    masks = out.argmax(1)
    top2 = np.sort(out, axis=1)[:, -2:]
    masks[(top2[:, 1] - top2[:, 0]) < 1e-4 * np.abs(out).max()] = scoring.IGNORE
    path = tmp_path_factory.mktemp("aux-data") / "masks.npz"
    np.savez(str(path), x=images, y=masks.astype(np.uint8))
    return str(path), masks


@pytest.mark.parametrize("split,args", [(0, ()), (2, ()), ("2.3", ("--compress", "int8")), (3, ())])
def test_both_outputs_come_back_and_the_first_is_scored(split, args, aux_store, aux_masks, tmp_path):
    """The tail's two outputs travel in one RESULT (protocol 3); the report scores "out", the model's first: every
    labelled pixel right at every split (int8 compression of the boundary may flip a few)."""
    path, masks = aux_masks
    server = ServerProcess(aux_store, "--max-batch", 4)
    try:
        report = tmp_path / "r.json"
        proc = run_cli("run-edge", "--cloud", server.address, "--cache", tmp_path / "cache", "--model", AUX,
                       "--split", split, "--dataset", "npz:" + path, "--batch-size", 3, "--report", report, *args)
        assert proc.returncode == 0, proc.stderr
    finally:
        assert server.stop() == 0, server.log_text()
    r = json.loads(report.read_text())
    assert r["task"] == "segmentation" and r["n"] == 24
    assert r["accuracy"] == 1.0 if not args else r["accuracy"] > 0.97
    both = 2 * 4 * 32 * 32 * 4
    assert both < r["bytes_received_per_sample"] < both + 200, "both outputs come back in one RESULT, at every split"


def test_an_output_that_is_not_tensors_is_refused_in_one_line(tmp_path):
    proc = run_cli("export", "--model", "tiny_models:detections", "--split", "1", "--random-init", "--out",
                   tmp_path / "out")
    assert proc.returncode == 1
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: the model's output is a list of 2 holding dict; a tail returns tensors"), line
    assert "export its backbone" in line and not (tmp_path / "out").exists()
