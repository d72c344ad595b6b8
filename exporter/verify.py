"""Parity of a written bundle with the unsplit model, as Optimum validates its exports.

Each format's head and tail are loaded from the files just written (onnxruntime on
the CPU for ONNX, ``torch.jit.load`` for TorchScript) and run one after the other
on seeded random batches; the boundary tensor and the final output are compared
with the unsplit PyTorch model by :data:`RULE`:

* names and shapes must match;
* ``max |actual - reference| <= atol + rtol * max |reference|`` over the whole tensor
  (scale-relative: float32 reordering in onnxruntime's kernels perturbs a deep
  activation by about 1e-5 of its largest value wherever an element sits, so an
  elementwise ``rtol * |b|`` leaves elements near zero no room); each result records
  ``max_rel_diff`` = max abs diff / max |reference|;
* a final output of shape [batch, classes] must give the same top-1 class on every
  sample whose reference top-2 margin exceeds that tolerance (closer calls are
  ties that float noise may break either way).

A tail that ends with a detector's own post-processing (``output.postprocess``) is
checked by :data:`DETECTION_RULE` instead: each reference detection whose score is
clearly above the cut-off (more than the score tolerance above the detector's score
threshold, or above the lowest score kept where an image's rows are all used: NMS
and top-k may keep or drop those either way with float noise) must be matched by an
unused detection of the same label whose score is within the score tolerance and
whose box corners are within the box tolerance (both by RULE's bound); the record
keeps how many were checked and matched and the largest box and score differences.

A reference that cannot tell a right export from a wrong one is *degenerate*: all
zero, constant, spread over no more than twice the tolerance (so a constant passes),
or the same for every sample of a batch (so an output ignoring its input passes).
The comparison still runs; the result names the reason in ``degenerate`` and the
manifest's record says ``"meaningful": false`` with the reasons.  Any failure raises,
naming format, split, batch size, the absolute and relative differences and what
to do.
"""
import os
import warnings
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from runtime.backends.ort import cpu_session
from runtime.bundle import schema

from .errors import VerificationError

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3
BATCH_SIZES = (1, 4)


def _onnx_runner(path: str, input_names: List[str], output_names: List[str], what: str) -> Callable:
    session = cpu_session(path)
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if inputs != input_names or outputs != output_names:
        raise VerificationError("{}: inputs {} / outputs {}, the manifest says {} / {}".format(
            what, inputs, outputs, input_names, output_names))

    def run(x):
        ys = session.run(output_names, dict(zip(input_names, as_tuple(x))))
        return ys[0] if len(ys) == 1 else tuple(ys)
    return run


def _torchscript_runner(path: str) -> Callable:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice: TorchScript is what a Jetson runs
        module = torch.jit.load(path, map_location="cpu").eval()

    def run(x):
        with torch.no_grad():
            return to_numpy(module(*[torch.from_numpy(a) for a in as_tuple(x)]))
    return run


def as_tuple(x) -> tuple:
    """The tensors of a value that crosses a cut or comes out of a model: one, or a tuple (list) of them."""
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def to_numpy(y):
    """A module's result as numpy: an array, or a tuple of arrays."""
    return tuple(t.numpy() for t in y) if isinstance(y, (tuple, list)) else y.numpy()


def _names(spec: dict) -> List[str]:
    return [t["name"] for t in schema.tensors(spec)]


def _runner(directory: str, manifest: dict, part: str, fmt: str) -> Optional[Callable]:
    """The part's file in ``fmt`` as a callable; a part written in one format only (a tail after a detector's NMS is
    TorchScript) runs in that one, after a head in ``fmt``."""
    entry = manifest["parts"][part]
    if entry is None:
        return None
    if fmt not in entry["files"]:
        fmt = sorted(entry["files"])[0]
    path = os.path.join(directory, entry["files"][fmt]["file"])
    if fmt == "onnx":
        names = (_names(manifest["input"]), _names(manifest["boundary"])) if part == "head" else \
            (_names(manifest["boundary"]), _names(manifest["output"]))
        return _onnx_runner(path, names[0], names[1], "{} {}".format(part, fmt))
    return _torchscript_runner(path)


RULE = ("max|actual - reference| <= atol + rtol * max|reference| per tensor; "
        "a [batch, classes] output's top-1 must agree on every sample whose reference top-2 margin exceeds that bound")
DETECTION_RULE = ("each reference detection clearly above the score cut-off matches one of the same label, with score "
                  "and box corners within atol + rtol * max|reference| of the scores and of the boxes")
NOISE_CEILING = 1e-2  # a relative error above this is a wrong export, never float32 noise (measured ~1e-5)


def tolerance(expected: np.ndarray, atol: float, rtol: float) -> float:
    """The bound on max |actual - expected|: atol + rtol * max |expected|."""
    return atol + rtol * (float(np.abs(expected).max()) if expected.size else 0.0)


def degenerate_reason(expected: np.ndarray, tol: float) -> Optional[str]:
    """Why ``expected`` cannot tell a right output from a wrong one within ``tol``, or None when it can."""
    if expected.size == 0:
        return "empty"
    if not np.all(np.isfinite(expected)):
        return "holds non-finite values"
    lo, hi = float(expected.min()), float(expected.max())
    if hi == lo:
        return "all zero" if hi == 0 else "constant ({:.3g} everywhere)".format(hi)
    if hi - lo <= 2 * tol:
        return "spread over {:.1e}, within twice the tolerance {:.1e}: a constant would pass".format(hi - lo, tol)
    if expected.ndim >= 1 and expected.shape[0] > 1:
        across = float((expected.max(axis=0) - expected.min(axis=0)).max())
        if across <= 2 * tol:
            return "the same for every sample of the batch (within {:.1e}): an output ignoring its input " \
                   "would pass".format(across)
    return None


def top1_agreement(actual: np.ndarray, expected: np.ndarray, tol: float) -> dict:
    """Top-1 of [batch, classes] logits: samples whose reference top-2 margin exceeds ``tol`` must agree."""
    top2 = np.sort(expected, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > tol
    agree = actual.argmax(axis=1) == expected.argmax(axis=1)
    return {"top1_checked": int(clear.sum()), "top1_agreed": int((agree & clear).sum())}


def compare(actual: np.ndarray, expected: np.ndarray, atol: float, rtol: float, classes: bool = False) -> dict:
    """One tensor against its reference by RULE (``classes``: also top-1, for a 2-D final output)."""
    if actual.shape != expected.shape:
        return {"passed": False, "max_abs_diff": None, "max_rel_diff": None,
                "reason": "shape {} != expected {}".format(actual.shape, expected.shape)}
    a, b = actual.astype(np.float64), expected.astype(np.float64)
    tol = tolerance(b, atol, rtol)
    scale = float(np.abs(b).max()) if b.size else 0.0
    diff = float(np.abs(a - b).max()) if b.size else 0.0
    result = {"passed": bool(diff <= tol), "max_abs_diff": diff,
              "max_rel_diff": diff / scale if scale > 0 and np.isfinite(scale) else None,
              "reference_max_abs": scale, "tolerance": tol, "degenerate": degenerate_reason(b, tol)}
    if not np.isfinite(diff):
        result.update(passed=False, max_abs_diff=None, reason="non-finite values")
    elif classes and b.ndim == 2 and b.shape[1] > 1:
        result.update(top1_agreement(a, b, tol))
        if result["top1_agreed"] < result["top1_checked"]:
            result.update(passed=False, reason="top-1 class differs on {} of the {} samples with a clear "
                          "reference margin".format(result["top1_checked"] - result["top1_agreed"],
                                                    result["top1_checked"]))
    return result


def compare_detections(actual, expected, atol: float, rtol: float, score_thresh: float) -> dict:
    """A detector's padded (boxes, scores, labels) against the unsplit detector's, by DETECTION_RULE."""
    boxes, scores, labels = (np.asarray(t) for t in actual)
    ref_boxes, ref_scores, ref_labels = (np.asarray(t) for t in expected)
    if boxes.shape != ref_boxes.shape or scores.shape != ref_scores.shape or labels.shape != ref_labels.shape:
        return {"passed": False, "max_abs_diff": None, "max_rel_diff": None,
                "reason": "shapes {} / {} / {} != expected {} / {} / {}".format(
                    boxes.shape, scores.shape, labels.shape, ref_boxes.shape, ref_scores.shape, ref_labels.shape)}
    valid = ref_labels >= 0
    box_tol = tolerance(ref_boxes[valid], atol, rtol) if valid.any() else atol
    score_tol = tolerance(ref_scores[valid], atol, rtol) if valid.any() else atol
    checked = matched = 0
    box_diff = score_diff = 0.0
    for i in range(ref_labels.shape[0]):
        kept = np.flatnonzero(ref_labels[i] >= 0)
        # a detection near the score threshold, or near the lowest score kept when an image's rows are all used,
        # may fall either side of it with float noise: not checked
        floor = score_thresh
        if len(kept) == ref_labels.shape[1]:
            floor = max(floor, float(ref_scores[i, kept].min()))
        free = list(np.flatnonzero(labels[i] >= 0))
        for j in kept:
            if ref_scores[i, j] <= floor + score_tol:
                continue
            checked += 1
            best = None
            for k in free:
                if labels[i, k] != ref_labels[i, j] or abs(float(scores[i, k]) - float(ref_scores[i, j])) > score_tol:
                    continue
                d = float(np.abs(boxes[i, k].astype(np.float64) - ref_boxes[i, j]).max())
                if d <= box_tol and (best is None or d < best[1]):
                    best = (k, d)
            if best is not None:
                free.remove(best[0])
                matched += 1
                box_diff = max(box_diff, best[1])
                score_diff = max(score_diff, abs(float(scores[i, best[0]]) - float(ref_scores[i, j])))
    scale = float(np.abs(ref_boxes[valid]).max()) if valid.any() else 0.0
    result = {"passed": matched == checked, "max_abs_diff": box_diff, "max_rel_diff": box_diff / scale if scale else None,
              "reference_max_abs": scale, "tolerance": box_tol, "max_score_diff": score_diff,
              "score_tolerance": score_tol, "detections_checked": checked, "detections_matched": matched,
              "degenerate": None if checked else "no detection clearly above the score threshold {:.3g}: the "
                                                 "boxes were not compared".format(score_thresh)}
    if matched < checked:
        result["reason"] = "{} of the {} detections clearly above the score threshold have no match of the same " \
                           "label, box and score".format(checked - matched, checked)
    return result


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else "{:.2e}".format(value)


def failure_advice(result: dict) -> str:
    """What to do about a failed comparison, from its relative error."""
    rel = result.get("max_rel_diff")
    if rel is not None and rel <= NOISE_CEILING and "reason" not in result:
        return "if your model is that sensitive to float32 rounding, loosen --atol/--rtol; else report a bug"
    return "too large for float32 noise: check --weights and --split, or report a bug"


def failure_message(what: str, result: dict, atol: float, rtol: float) -> str:
    """One line: what differs, by how much in absolute and relative terms, against which bound, what to do."""
    return ("verification failed: {} differs from the unsplit model (max abs diff {}, relative {} of max |ref| {}; "
            "allowed atol {} + rtol {} x max |ref|{}): {}; nothing was written".format(
                what, _fmt(result["max_abs_diff"]), _fmt(result.get("max_rel_diff")),
                _fmt(result.get("reference_max_abs")), atol, rtol,
                ", " + result["reason"] if "reason" in result else "", failure_advice(result)))


def meaningfulness(results: Sequence[dict]) -> Tuple[bool, Optional[str]]:
    """(meaningful, reason): false with '<tensor>: <why>' per degenerate tensor when any result is degenerate."""
    reasons = []
    for r in results:
        if r.get("degenerate"):
            line = "{} {}".format(r["tensor"], r["degenerate"])
            if not any(x.startswith(r["tensor"] + " ") for x in reasons):
                reasons.append(line)
    checked = sorted({r["tensor"] for r in results} - {x.split(" ", 1)[0] for x in reasons})
    if not reasons:
        return True, None
    still = "; still checked: {}".format(", ".join(checked)) if checked else "; nothing else was checked"
    return False, "; ".join(reasons) + still


def record(results: List[dict], atol: float, rtol: float, **extra) -> dict:
    """The manifest's ``verification`` entry: tolerances, RULE, results, worst relative error, meaningfulness."""
    meaningful, reason = meaningfulness(results)
    rels = [r["max_rel_diff"] for r in results if r.get("max_rel_diff") is not None]
    entry = {"atol": atol, "rtol": rtol}
    entry.update(extra)
    rule = RULE
    if any(r["tensor"] == "detections" for r in results):
        rule = "{}; detections: {}".format(RULE, DETECTION_RULE)
    entry.update({"rule": rule, "max_rel_diff": max(rels) if rels else None, "meaningful": meaningful,
                  "reason": reason, "results": results})
    return entry


def verify_bundle(directory: str, manifest: dict, model: Callable, head: Optional[nn.Module],
                  formats: Sequence[str], options=None, progress=None) -> List[dict]:
    """Check every format of the bundle in ``directory`` by RULE against ``model`` (the unsplit model's output tensor
    for an input: ``TracedModel.reference``); return per-check results or raise VerificationError.

    ``options`` (ExportOptions, default its defaults) gives ``atol``, ``rtol`` and ``batch_sizes``."""
    atol = options.atol if options is not None else DEFAULT_ATOL
    rtol = options.rtol if options is not None else DEFAULT_RTOL
    batch_sizes = options.batch_sizes if options is not None else BATCH_SIZES
    seed = 0
    shape = tuple(manifest["input"]["shape"][1:])
    generator = torch.Generator().manual_seed(seed)
    batches = [torch.randn((b,) + shape, generator=generator) for b in batch_sizes]
    with torch.no_grad():
        references = [(x, to_numpy(model(x)), to_numpy(head(x)) if head is not None else None) for x in batches]
    split = schema.split_id(manifest)
    boundary_names, output_names = _names(manifest["boundary"]), _names(manifest["output"])
    detections = manifest["output"].get("postprocess")
    results = []
    for fmt in formats:
        run_head = _runner(directory, manifest, "head", fmt)
        run_tail = _runner(directory, manifest, "tail", fmt)
        for x, ref_out, ref_boundary in references:
            boundary = run_head(x.numpy()) if run_head else x.numpy()
            checks = []
            if ref_boundary is not None:
                for name, actual, expected in zip(boundary_names, as_tuple(boundary), as_tuple(ref_boundary)):
                    checks.append((name, compare(actual, expected, atol, rtol)))
            out = run_tail(boundary) if run_tail else boundary
            if detections is not None:
                checks.append(("detections", compare_detections(out, ref_out, atol, rtol, detections["score_thresh"])))
            else:
                for name, actual, expected in zip(output_names, as_tuple(out), as_tuple(ref_out)):
                    checks.append((name, compare(actual, expected, atol, rtol, classes=True)))
            for tensor, check in checks:
                result = dict(format=fmt, batch_size=int(x.shape[0]), tensor=tensor, **check)
                results.append(result)
                if not result["passed"]:
                    raise VerificationError(failure_message("{} split {} batch {}: {}".format(
                        fmt, split, result["batch_size"], tensor), result, atol, rtol))
            if progress:
                progress()
    return results
