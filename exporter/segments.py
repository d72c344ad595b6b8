"""Export a model cut at every valid point, segment by segment: what edge and cloud profile.

``<model>-segments/`` holds segment ``i`` (point ``i`` to point ``i + 1``) as
``seg{i:03d}.onnx`` / ``.pt`` and a manifest of kind ``segments`` with every point's
boundary spec.  Each side times each segment with the runtime and device it will
really use; the planner adds them up (head = segments before the split, tail =
segments after it).  Chained together the segments must reproduce the unsplit
model, which is verified as for a split bundle.
"""
import os
import warnings
from typing import Optional, Tuple

import numpy as np
import torch

from runtime.backends.ort import cpu_session
from runtime.bundle import manifest as mf
from runtime.bundle import schema

from . import compile as compiler
from .bundle import RANDOM_INIT_SEED, created_now, input_spec, output_specs, prepare_model, staged, toolchain
from .cutpoints import TracedModel
from .errors import ExportError, VerificationError
from .models.configs import resolve
from .options import ExportOptions
from .progress import Steps
from .verify import as_tuple, compare, failure_message, to_numpy
from .verify import record as verification_record

SEGMENT_NAME = "x"


def _run_chain(directory: str, segments, fmt: str, x: np.ndarray):
    """The chained segments' output for ``x``: an array, or (a model of several outputs) a tuple of them."""
    if fmt == "onnx":
        for seg in segments:
            session = cpu_session(os.path.join(directory, seg["files"]["onnx"]["file"]))
            ys = session.run(None, {session.get_inputs()[0].name: x})
            x = ys[0] if len(ys) == 1 else tuple(ys)
        return x
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
        for seg in segments:
            x = to_numpy(torch.jit.load(os.path.join(directory, seg["files"]["torchscript"]["file"]))(
                torch.from_numpy(x)))
    return x


def _output_names(traced: TracedModel, index: int):
    """What segment ``index`` returns, in its ONNX file: ``x_out``, or one name per output for the last segment of
    a model of several outputs."""
    if index == len(traced.points) - 2 and traced.points[-1].outputs:
        return ["{}_out_{}".format(SEGMENT_NAME, i) for i in range(len(traced.points[-1].outputs))]
    return SEGMENT_NAME + "_out"


def export_segments(model_spec: str, options: Optional[ExportOptions] = None) -> Tuple[str, dict]:
    """Export the segments bundle of a model; return its directory and manifest.  Raises ExportError."""
    o = options or ExportOptions()
    formats = [f for f in mf.FORMATS if f in set(o.formats)]
    opset, atol, rtol = o.opset, o.atol, o.rtol
    if o.postprocess:
        raise ExportError("--postprocess exports one split (--split K); profile the detector's backbone with "
                          "--segments --trace-module backbone")
    config = resolve(model_spec, o.input_shape, o.trace_module, o.leaf_modules)
    model, weights_path, weights_sha = prepare_model(config, o.weights, o.random_init)
    traced = TracedModel(model, config.input_shape, config.leaf_modules)
    n = len(traced.points) - 1
    destination = os.path.join(o.out_dir, mf.segments_dir_name(config.model_id))
    with staged(destination) as tmp:
        x = torch.randn((2,) + config.input_shape, generator=torch.Generator().manual_seed(1))
        segments = []
        with Steps("export {} segments".format(config.model_id), n * len(formats) + 1) as steps:
            for i in range(n):
                module = traced.segment(i)
                files = {}
                for fmt in formats:
                    path = os.path.join(tmp, mf.segment_file_name(i, fmt))
                    steps.advance("segment {} -> {}".format(i, fmt))
                    extra = compiler.export_onnx(module, x, path, opset, SEGMENT_NAME, _output_names(traced, i)) \
                        if fmt == "onnx" else compiler.export_torchscript(module, x, path)
                    files[fmt] = mf.file_entry(path, format=fmt, **extra)
                with torch.no_grad():
                    y = module(x)
                segments.append({"index": i, "from": i, "to": i + 1, "name": traced.points[i + 1].name,
                                 "input": {"shape": [None] + list(x.shape[1:])},
                                 "output": {"shape": [None] + list(as_tuple(y)[0].shape[1:])},
                                 "params": sum(p.numel() for p in module.parameters()), "files": files})
                x = y
            model_spec = schema.model_spec(config.model_id, config.source, config.notes, weights_path, weights_sha,
                                           weights_path is None, RANDOM_INIT_SEED, len(traced.points))
            cuts = [c.as_dict() for c in traced.multi if len(c.tensors) <= o.max_tensors]
            manifest = schema.segments_manifest(model_spec, input_spec(config),
                                                output_specs(traced.points[-1]),
                                                [p.as_dict() for p in traced.points], segments, created_now(),
                                                toolchain(), cuts)
            steps.advance("verify the chain")
            sample = torch.randn((3,) + config.input_shape, generator=torch.Generator().manual_seed(2))
            with torch.no_grad():
                ref = to_numpy(traced.reference(sample))
            results = []
            names = traced.output_names
            for fmt in formats:
                chained = _run_chain(tmp, segments, fmt, sample.numpy())
                for name, actual, expected in zip(names, as_tuple(chained), as_tuple(ref)):
                    result = dict(format=fmt, batch_size=3, tensor=name,
                                  **compare(actual, expected, atol, rtol, classes=True))
                    results.append(result)
                    if not result["passed"]:
                        raise VerificationError(failure_message("the chained {} segments' {}".format(fmt, name),
                                                                result, atol, rtol))
            manifest["verification"] = verification_record(results, atol, rtol)
            mf.write_manifest(tmp, manifest)
    return destination, manifest
