"""Compiling a head or tail module into its deployable files: ONNX and TorchScript.

ONNX goes through torch's TorchScript-based exporter (``dynamo=False``): in torch
2.x the dynamo exporter always writes IR version 10 / opset 18, which the
onnxruntime 1.10/1.11 of JetPack 4.6 refuses (it reads opset <= 15, IR <= 8).  The
written file is checked: its default-domain opset must be the one asked for and
its IR version the lowest that opset needs (8 for opset 15), or the export fails.
"""
import io
import warnings
from typing import Dict, List

import onnx
import onnx.helper
import torch
from torch import nn

from .errors import ExportError

JETSON_OPSET = 15  # onnxruntime(-gpu) 1.10 on JetPack 4.6 reads opset <= 15, IR <= 8


def max_ir_version(opset: int) -> int:
    return onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", opset)])


def _names(names) -> List[str]:
    return [names] if isinstance(names, str) else list(names)


def _args(example) -> tuple:
    """A module's example arguments: one tensor, or the tuple of tensors that crosses a cut."""
    return tuple(example) if isinstance(example, (tuple, list)) else (example,)


def export_onnx(module: nn.Module, example, path: str, opset: int, input_names, output_names) -> Dict[str, int]:
    """Write ``module`` as ONNX with a dynamic batch axis on every input and output (``example``: a tensor or a
    tuple of them; names: one or a list each); return its opset and IR version."""
    buf = io.BytesIO()
    inputs, outputs = _names(input_names), _names(output_names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice; chosen on purpose (above)
        try:
            torch.onnx.export(module, _args(example), buf, dynamo=False, opset_version=opset,
                              input_names=inputs, output_names=outputs,
                              dynamic_axes={name: {0: "batch"} for name in inputs + outputs},
                              do_constant_folding=True)
        except Exception as exc:
            raise ExportError("ONNX export at opset {} failed ({}: {}); try another --opset".format(
                opset, type(exc).__name__, str(exc).splitlines()[0][:300]))
    model = onnx.load_from_string(buf.getvalue())
    # The exporter may stamp a newer IR version than the opset needs; the file uses no
    # newer IR feature, so the lowest version for its opset is the honest one.
    model.ir_version = min(model.ir_version, max_ir_version(opset))
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return check_onnx_file(path, opset)


def check_onnx_file(path: str, opset: int) -> Dict[str, int]:
    """Read a written file back and fail unless its opset and IR version are what was asked."""
    model = onnx.load(path, load_external_data=False)
    written = {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")}
    if written != {opset}:
        raise ExportError("{} was written with opset {}, not the {} asked for; the exporter could not "
                          "target that opset".format(path, sorted(written), opset))
    if model.ir_version > max_ir_version(opset):
        raise ExportError("{} has IR version {}; opset {} runtimes need <= {}".format(
            path, model.ir_version, opset, max_ir_version(opset)))
    return {"opset": opset, "ir_version": int(model.ir_version)}


def export_torchscript(module: nn.Module, example, path: str) -> Dict[str, int]:
    """Trace ``module`` to TorchScript and save it (file format readable by torch 1.10 on a Jetson); ``example``
    is a tensor or a tuple of them."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            traced = torch.jit.trace(module, _args(example), check_trace=False)
        except Exception as exc:
            raise ExportError("TorchScript trace failed ({}: {})".format(
                type(exc).__name__, str(exc).splitlines()[0][:300]))
    traced.save(path)
    return {}
