"""Parity of a written bundle with the unsplit model, as Optimum validates its exports.

Each format's head and tail are loaded from the files just written (onnxruntime on
the CPU for ONNX, ``torch.jit.load`` for TorchScript) and run one after the other
on seeded random batches; the boundary tensor and the final output are compared
with the unsplit PyTorch model: names, shapes, and ``|a - b| <= atol + rtol*|b|``
elementwise.  Any failure raises, naming format, split, batch size and the
largest difference.
"""
import os
import warnings
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .errors import VerificationError

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3
BATCH_SIZES = (1, 4)


def _onnx_runner(path: str, input_name: str, output_name: str, what: str) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if inputs != [input_name] or outputs != [output_name]:
        raise VerificationError("{}: inputs {} / outputs {}, the manifest says [{}] / [{}]".format(
            what, inputs, outputs, input_name, output_name))
    return lambda x: session.run([output_name], {input_name: x})[0]


def _torchscript_runner(path: str) -> Callable[[np.ndarray], np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice: TorchScript is what a Jetson runs
        module = torch.jit.load(path, map_location="cpu").eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()
    return run


def _runner(directory: str, manifest: dict, part: str, fmt: str) -> Optional[Callable]:
    entry = manifest["parts"][part]
    if entry is None:
        return None
    path = os.path.join(directory, entry["files"][fmt]["file"])
    if fmt == "onnx":
        names = (manifest["input"]["name"], manifest["boundary"]["name"]) if part == "head" else \
            (manifest["boundary"]["name"], manifest["output"]["name"])
        return _onnx_runner(path, names[0], names[1], "{} {}".format(part, fmt))
    return _torchscript_runner(path)


def compare(actual: np.ndarray, expected: np.ndarray, atol: float, rtol: float) -> dict:
    if actual.shape != expected.shape:
        return {"passed": False, "max_abs_diff": None,
                "reason": "shape {} != expected {}".format(actual.shape, expected.shape)}
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    ok = bool(np.all(diff <= atol + rtol * np.abs(expected.astype(np.float64))))
    return {"passed": ok, "max_abs_diff": float(diff.max()) if diff.size else 0.0}


def verify_bundle(directory: str, manifest: dict, model: nn.Module, head: Optional[nn.Module],
                  formats: Sequence[str], atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
                  batch_sizes: Sequence[int] = BATCH_SIZES, seed: int = 0, progress=None) -> List[dict]:
    """Check every format of the bundle in ``directory``; return per-check results or raise VerificationError."""
    shape = tuple(manifest["input"]["shape"][1:])
    generator = torch.Generator().manual_seed(seed)
    batches = [torch.randn((b,) + shape, generator=generator) for b in batch_sizes]
    with torch.no_grad():
        references = [(x, model(x).numpy(), head(x).numpy() if head is not None else None) for x in batches]
    split = manifest["split"]["index"]
    results = []
    for fmt in formats:
        run_head = _runner(directory, manifest, "head", fmt)
        run_tail = _runner(directory, manifest, "tail", fmt)
        for x, ref_out, ref_boundary in references:
            boundary = run_head(x.numpy()) if run_head else x.numpy()
            checks = []
            if ref_boundary is not None:
                checks.append(("boundary", compare(boundary, ref_boundary, atol, rtol)))
            out = run_tail(boundary) if run_tail else boundary
            checks.append(("output", compare(out, ref_out, atol, rtol)))
            for tensor, check in checks:
                result = dict(format=fmt, batch_size=int(x.shape[0]), tensor=tensor, **check)
                results.append(result)
                if not result["passed"]:
                    raise VerificationError(
                        "verification failed: {} split {} batch {}: {} differs from the unsplit model "
                        "(max abs diff {}, atol {}, rtol {}{}); nothing was written".format(
                            fmt, split, result["batch_size"], tensor, result["max_abs_diff"], atol, rtol,
                            ", " + result["reason"] if "reason" in result else ""))
            if progress:
                progress()
    return results
