"""Export: cut a model at a split point and write a verified bundle, atomically.

The bundle is first built in a hidden temporary directory beside its destination
(``artifacts/.tmp-*``): compiled files, then ``manifest.json``, then verification.
Only when all of that succeeded is it renamed into place, so a failed or
interrupted export leaves no bundle behind and never damages an existing one.
"""
import contextlib
import datetime
import os
import platform
import shutil
import tempfile
from typing import Optional, Sequence, Tuple

import onnx
import torch

from runtime.bundle import manifest as mf

from . import compile as compiler
from .cutpoints import CutPoint, TracedModel
from .errors import ExportError
from .models.configs import ModelConfig, resolve
from .progress import Steps
from .verify import BATCH_SIZES, DEFAULT_ATOL, DEFAULT_RTOL, verify_bundle
from .verify import record as verification_record
from .weights import find_default_weights, load_weights

INPUT_NAME, BOUNDARY_NAME, OUTPUT_NAME = "input", "boundary", "output"
RANDOM_INIT_SEED = 0


@contextlib.contextmanager
def staged(destination: str):
    """A hidden temporary directory beside ``destination``; renamed into place if the block succeeds, else removed."""
    out_dir = os.path.dirname(destination) or "."
    try:
        os.makedirs(out_dir, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".tmp-{}-".format(os.path.basename(destination)), dir=out_dir)
    except OSError as exc:
        raise ExportError("cannot write to output directory {} ({}); choose another with --out".format(
            out_dir, exc.strerror or exc))
    try:
        yield tmp
        mf.install_dir(tmp, destination)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def prepare_model(config: ModelConfig, weights: Optional[str], random_init: bool):
    """Build the model and load its weights; return (model, weights path, weights sha256)."""
    if weights and random_init:
        raise ExportError("--weights and --random-init contradict each other; give one")
    path = weights or find_default_weights(config.default_weights)
    if path is None and not random_init:
        looked = " (looked for {})".format(config.default_weights) if config.default_weights else ""
        raise ExportError("no weights file for {}{}; pass --weights PATH, or --random-init to export "
                          "untrained weights (accuracy will be at chance level)".format(config.model_id, looked))
    torch.manual_seed(RANDOM_INIT_SEED)  # random init is reproducible: same seed, same bundle id
    model = config.build()
    sha = load_weights(model, path) if path else None
    return model.eval(), path, sha


def select_point(traced: TracedModel, split: str) -> CutPoint:
    """A split given as an index (``20``) or as a point's name (``avg_pool``)."""
    text = str(split).strip()
    if text.lstrip("-").isdigit():
        return traced.point(int(text))
    matches = [p for p in traced.points if p.name == text or p.node == text]
    if not matches:
        raise ExportError("{!r} is not a valid split point (inside a block, or more than one tensor crosses "
                          "there); valid: {}".format(text, ", ".join("{}={}".format(p.index, p.name)
                                                                      for p in traced.points)))
    return matches[0]


def _tensor_spec(name: str, shape: Tuple[int, ...], dtype: str = "float32") -> dict:
    numel = 1
    for d in shape:
        numel *= d
    return {"name": name, "shape": [None] + list(shape), "dtype": dtype, "bytes_per_sample": numel * 4}


def _toolchain() -> dict:
    import torchvision
    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "onnx": onnx.__version__,
            "python": platform.python_version()}


def export_bundle(model_spec: str, split: str, weights: Optional[str] = None, random_init: bool = False,
                  formats: Sequence[str] = mf.FORMATS, opset: int = compiler.JETSON_OPSET,
                  out_dir: str = "artifacts", input_shape: Optional[Tuple[int, ...]] = None,
                  atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
                  mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                  batch_sizes: Sequence[int] = BATCH_SIZES) -> Tuple[str, dict]:
    """Export one bundle; return its directory and manifest.  Raises ExportError on any problem."""
    formats = [f for f in mf.FORMATS if f in set(formats)]
    if not formats:
        raise ExportError("--formats must name at least one of {}".format(", ".join(mf.FORMATS)))
    config = resolve(model_spec, input_shape)
    if mean is not None:
        config.mean = tuple(mean)
    if std is not None:
        config.std = tuple(std)
    steps = Steps("export {}".format(config.model_id), 2 + 2 * len(formats) + len(formats) * len(batch_sizes))
    with steps:
        steps.advance("build and load weights")
        model, weights_path, weights_sha = prepare_model(config, weights, random_init)
        traced = TracedModel(model, config.input_shape)
        point = select_point(traced, split)
        steps.advance("traced: {} split points".format(len(traced.points)))
        head, tail = traced.head(point.index), traced.tail(point.index)
        destination = os.path.join(out_dir, mf.bundle_dir_name(config.model_id, point.index))
        with staged(destination) as tmp:
            manifest = _build(tmp, config, traced, point, head, tail, formats, opset, weights_path,
                              weights_sha, random_init or weights_path is None, steps)
            results = verify_bundle(tmp, manifest, model, head, formats, atol, rtol, batch_sizes,
                                    progress=lambda: steps.advance("verified"))
            manifest["verification"] = verification_record(results, atol, rtol, batch_sizes=list(batch_sizes),
                                                           reference="unsplit PyTorch model")
            mf.write_manifest(tmp, manifest)
    return destination, manifest


def _build(tmp, config, traced, point, head, tail, formats, opset, weights_path, weights_sha, random_init, steps):
    last = len(traced.points) - 1
    example = torch.randn((2,) + config.input_shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        boundary_example = head(example) if head is not None else example
    parts = {}
    for part, module, x, names in (("head", head, example, (INPUT_NAME, BOUNDARY_NAME)),
                                   ("tail", tail, boundary_example, (BOUNDARY_NAME, OUTPUT_NAME))):
        if module is None:
            parts[part] = None
            continue
        files = {}
        for fmt in formats:
            path = os.path.join(tmp, mf.FILE_NAMES[(part, fmt)])
            steps.advance("compile {} -> {}".format(part, fmt))
            if fmt == "onnx":
                extra = compiler.export_onnx(module, x, path, opset, names[0], names[1])
            else:
                extra = compiler.export_torchscript(module, x, path)
            files[fmt] = mf.file_entry(path, format=fmt, **extra)
        params = sum(p.numel() for p in module.parameters())
        parts[part] = {"files": files, "params": params, "input": names[0], "output": names[1]}
    for part in ("head", "tail"):  # keep the step count exact when a part is absent
        if parts[part] is None:
            for _ in formats:
                steps.advance("no {} at split {}".format(part, point.index))
    out_node = traced.points[-1]
    hashes = [f["sha256"] for p in parts.values() if p for f in p["files"].values()]
    return {
        "schema_version": mf.SCHEMA_VERSION,
        "bundle_id": mf.bundle_id(config.model_id, weights_sha, point.index, hashes),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {
            "id": config.model_id, "source": config.source, "notes": config.notes,
            "weights": {"path": weights_path, "sha256": weights_sha, "random_init": bool(random_init),
                        "random_seed": RANDOM_INIT_SEED if random_init else None},
            "num_split_points": len(traced.points),
        },
        "split": {"index": point.index, "name": point.name, "node": point.node,
                  "first": point.index == 0, "last": point.index == last,
                  "head_params": point.params, "head_flops": point.flops,
                  "total_flops": out_node.flops},
        "input": dict(_tensor_spec(INPUT_NAME, config.input_shape), preprocess=config.preprocess_spec()),
        "boundary": _tensor_spec(BOUNDARY_NAME, point.shape),
        "output": _tensor_spec(OUTPUT_NAME, out_node.shape),
        "parts": parts,
        "toolchain": _toolchain(),
    }


def describe_points(model_spec: str, input_shape: Optional[Tuple[int, ...]] = None):
    """The valid split points of a model (random weights: they do not change the graph)."""
    config = resolve(model_spec, input_shape)
    torch.manual_seed(RANDOM_INIT_SEED)
    traced = TracedModel(config.build(), config.input_shape)
    return config, [p.as_dict() for p in traced.points]
