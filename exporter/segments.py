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
from .bundle import RANDOM_INIT_SEED, created_now, input_spec, prepare_model, staged, toolchain
from .cutpoints import TracedModel
from .errors import VerificationError
from .models.configs import resolve
from .options import ExportOptions
from .progress import Steps
from .verify import compare, failure_message
from .verify import record as verification_record

SEGMENT_NAME = "x"


def _run_chain(directory: str, segments, fmt: str, x: np.ndarray) -> np.ndarray:
    if fmt == "onnx":
        for seg in segments:
            session = cpu_session(os.path.join(directory, seg["files"]["onnx"]["file"]))
            x = session.run(None, {session.get_inputs()[0].name: x})[0]
        return x
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
        for seg in segments:
            x = torch.jit.load(os.path.join(directory, seg["files"]["torchscript"]["file"]))(torch.from_numpy(x)).numpy()
    return x


def export_segments(model_spec: str, options: Optional[ExportOptions] = None) -> Tuple[str, dict]:
    """Export the segments bundle of a model; return its directory and manifest.  Raises ExportError."""
    o = options or ExportOptions()
    formats = [f for f in mf.FORMATS if f in set(o.formats)]
    opset, atol, rtol = o.opset, o.atol, o.rtol
    config = resolve(model_spec, o.input_shape)
    model, weights_path, weights_sha = prepare_model(config, o.weights, o.random_init)
    traced = TracedModel(model, config.input_shape)
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
                    extra = compiler.export_onnx(module, x, path, opset, SEGMENT_NAME, SEGMENT_NAME + "_out") \
                        if fmt == "onnx" else compiler.export_torchscript(module, x, path)
                    files[fmt] = mf.file_entry(path, format=fmt, **extra)
                with torch.no_grad():
                    y = module(x)
                segments.append({"index": i, "from": i, "to": i + 1, "name": traced.points[i + 1].name,
                                 "input": {"shape": [None] + list(x.shape[1:])},
                                 "output": {"shape": [None] + list(y.shape[1:])},
                                 "params": sum(p.numel() for p in module.parameters()), "files": files})
                x = y
            model_spec = schema.model_spec(config.model_id, config.source, config.notes, weights_path, weights_sha,
                                           weights_path is None, RANDOM_INIT_SEED, len(traced.points))
            cuts = [c.as_dict() for c in traced.multi if len(c.tensors) <= o.max_tensors]
            manifest = schema.segments_manifest(model_spec, input_spec(config),
                                                schema.tensor_spec("output", traced.points[-1].shape),
                                                [p.as_dict() for p in traced.points], segments, created_now(),
                                                toolchain(), cuts)
            steps.advance("verify the chain")
            sample = torch.randn((3,) + config.input_shape, generator=torch.Generator().manual_seed(2))
            with torch.no_grad():
                ref = traced.reference(sample).numpy()
            results = []
            for fmt in formats:
                result = dict(format=fmt, batch_size=3, tensor="output",
                              **compare(_run_chain(tmp, segments, fmt, sample.numpy()), ref, atol, rtol, classes=True))
                results.append(result)
                if not result["passed"]:
                    raise VerificationError(failure_message("the chained {} segments' output".format(fmt),
                                                            result, atol, rtol))
            manifest["verification"] = verification_record(results, atol, rtol)
            mf.write_manifest(tmp, manifest)
    return destination, manifest
