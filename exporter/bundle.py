"""Export: cut a model at a split point and write a verified bundle, atomically.

The bundle is first built in a hidden temporary directory beside its destination
(``artifacts/.tmp-export-*``, ``runtime.bundle.staging``): compiled files, then
``manifest.json`` (built with ``runtime.bundle.schema``), then verification.  Only
when all of that succeeded is it renamed into place, so a failed or interrupted
export leaves no bundle behind and never damages an existing one.
"""
import contextlib
import dataclasses
import datetime
import os
import platform
import shutil
from typing import Optional, Sequence, Tuple, Union

import onnx
import torch

from runtime.bundle import manifest as mf
from runtime.bundle import schema, staging

from . import compile as compiler
from .cutpoints import CutPoint, MultiCut, TracedModel, boundary_names
from .errors import ExportError
from .models import detection
from .models.configs import ModelConfig, resolve
from .options import ExportOptions
from .progress import Steps
from .verify import record as verification_record
from .verify import verify_bundle
from .weights import find_default_weights, load_weights

INPUT_NAME, BOUNDARY_NAME, OUTPUT_NAME = "input", "boundary", "output"
RANDOM_INIT_SEED = 0


@contextlib.contextmanager
def staged(destination: str):
    """A hidden temporary directory beside ``destination``; renamed into place if the block succeeds, else removed."""
    out_dir = os.path.dirname(destination) or "."
    try:
        tmp = staging.temp_dir(out_dir, "export")
    except OSError as exc:
        raise ExportError("cannot write to output directory {} ({}); choose another with --store".format(
            out_dir, exc.strerror or exc))
    try:
        yield tmp
        staging.install_dir(tmp, destination)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def prepare_model(config: ModelConfig, weights: Optional[str], random_init: bool):
    """Build the model and load its weights; return (model, weights path, weights sha256)."""
    if weights and random_init:
        raise ExportError("--weights and --random-init contradict each other; give one")
    path = weights or (None if random_init else find_default_weights(config.default_weights))
    if path is None and not random_init:
        looked = " (looked for {})".format(config.default_weights) if config.default_weights else ""
        raise ExportError("no weights file for {}{}; pass --weights PATH, or --random-init to export "
                          "untrained weights (accuracy will be at chance level)".format(config.model_id, looked))
    torch.manual_seed(RANDOM_INIT_SEED)  # random init is reproducible: same seed, same bundle id
    model = config.build()
    sha = load_weights(model, path, config.model_id) if path else None
    return model.eval(), path, sha


def select_point(traced: TracedModel, split: str):
    """The cut ``--split`` names (``TracedModel.cut``): a CutPoint, or a MultiCut for a ``"K.J"`` id."""
    return traced.cut(split)


def created_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def toolchain() -> dict:
    import torchvision
    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "onnx": onnx.__version__,
            "python": platform.python_version()}


def export_bundle(model_spec: str, split: str, options: Optional[ExportOptions] = None) -> Tuple[str, dict]:
    """Export one bundle; return its directory and manifest.  Raises ExportError on any problem."""
    o = options or ExportOptions()
    formats = [f for f in mf.FORMATS if f in set(o.formats)]
    if not formats:
        raise ExportError("--formats must name at least one of {}".format(", ".join(mf.FORMATS)))
    config = resolve(model_spec, o.input_shape, o.trace_module, o.leaf_modules, o.postprocess)
    if config.postprocess and "torchscript" not in formats:
        raise ExportError("--postprocess needs torchscript in --formats: the tail runs the detector's NMS, which only "
                          "TorchScript carries (the head is still written in every format asked for)")
    if o.mean is not None:
        config.mean = tuple(o.mean)
    if o.std is not None:
        config.std = tuple(o.std)
    tail_formats = ["torchscript"] if config.postprocess else formats
    steps = Steps("export {}".format(config.model_id),
                  2 + len(formats) + len(tail_formats) + len(formats) * len(o.batch_sizes))
    with steps:
        steps.advance("build and load weights")
        model, weights_path, weights_sha = prepare_model(config, o.weights, o.random_init)
        traced = TracedModel(config.traced_part(model), config.input_shape, config.leaf_modules)
        point = select_point(traced, split)
        steps.advance("traced: {} split points".format(len(traced.points)))
        tail, outputs, reference = traced.tail(point), output_specs(traced.points[-1]), traced.reference
        if config.postprocess:
            tail, outputs, reference = _postprocessed(model, config, tail)
        job = _Job(config=config, traced=traced, point=point, head=traced.head(point), tail=tail, outputs=outputs,
                   formats=formats, tail_formats=tail_formats, opset=o.opset, weights_path=weights_path,
                   weights_sha=weights_sha, random_init=o.random_init or weights_path is None, steps=steps)
        destination = os.path.join(o.out_dir, mf.bundle_dir_name(config.model_id, point.id))
        with staged(destination) as tmp:
            manifest = _build(tmp, job)
            results = verify_bundle(tmp, manifest, reference, job.head, formats, o,
                                    progress=lambda: steps.advance("verified"))
            manifest["verification"] = verification_record(results, o.atol, o.rtol, batch_sizes=list(o.batch_sizes),
                                                           reference=_reference_name(config))
            mf.write_manifest(tmp, manifest)
    return destination, manifest


def _reference_name(config: ModelConfig) -> str:
    if config.postprocess:
        return "the whole detector's own forward (its transform at the bundle's input size)"
    return "unsplit PyTorch model"


@dataclasses.dataclass
class _Job:
    """One export's model, cut and settings, as ``_build`` needs them."""
    config: ModelConfig
    traced: TracedModel
    point: Union[CutPoint, MultiCut]
    head: Optional[torch.nn.Module]
    tail: Optional[torch.nn.Module]
    outputs: dict  # the output spec (``output_specs``, or a detector's ``_postprocessed``)
    formats: Sequence[str]
    tail_formats: Sequence[str]  # the formats the tail is written in: ``formats``, or TorchScript after NMS
    opset: int
    weights_path: Optional[str]
    weights_sha: Optional[str]
    random_init: bool
    steps: Steps

    def formats_of(self, part: str) -> Sequence[str]:
        return self.formats if part == "head" else self.tail_formats


def _build(tmp, job: _Job) -> dict:
    """Compile head and tail into ``tmp`` in every format; return the manifest (verification not yet in it)."""
    config, traced, point, head, tail, steps = job.config, job.traced, job.point, job.head, job.tail, job.steps
    opset = job.opset
    weights_path, weights_sha, random_init = job.weights_path, job.weights_sha, job.random_init
    last = len(traced.points) - 1
    boundary_specs = _boundary_specs(point)
    boundary_names = [spec["name"] for spec in boundary_specs]
    example = torch.randn((2,) + config.input_shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        boundary_example = head(example) if head is not None else example
    parts = {}
    output_names = [t["name"] for t in schema.tensors(job.outputs)]
    for part, module, x, names in (("head", head, example, ([INPUT_NAME], boundary_names)),
                                   ("tail", tail, boundary_example, (boundary_names, output_names))):
        if module is None:
            parts[part] = None
            continue
        files = {}
        for fmt in job.formats_of(part):
            path = os.path.join(tmp, mf.FILE_NAMES[(part, fmt)])
            steps.advance("compile {} -> {}".format(part, fmt))
            if fmt == "onnx":
                extra = compiler.export_onnx(module, x, path, opset, names[0], names[1])
            else:
                extra = compiler.export_torchscript(module, x, path)
            files[fmt] = mf.file_entry(path, format=fmt, **extra)
        params = sum(p.numel() for p in module.parameters())
        parts[part] = {"files": files, "params": params, "input": _joined(names[0]), "output": _joined(names[1])}
    for part in ("head", "tail"):  # keep the step count exact when a part is absent
        if parts[part] is None:
            for _ in job.formats_of(part):
                steps.advance("no {} at split {}".format(part, point.id))
    out_node = traced.points[-1]
    model = schema.model_spec(config.model_id, config.source, config.notes, weights_path, weights_sha, random_init,
                              RANDOM_INIT_SEED, len(traced.points))
    index = point.after if isinstance(point, MultiCut) else point.index
    split = {"index": index, "name": point.name, "node": point.node,
             "first": index == 0 and not isinstance(point, MultiCut), "last": index == last and tail is None,
             "head_params": point.params, "head_flops": point.flops, "total_flops": out_node.flops}
    if isinstance(point, MultiCut):
        split["cut"] = point.id
    return schema.split_manifest(model, split, input_spec(config),
                                 schema.tensors_spec(BOUNDARY_NAME, boundary_specs),
                                 job.outputs, parts, created_now(), toolchain())


def _boundary_specs(point) -> list:
    """The specs of the tensors that cross ``point``, named as the compiled head returns them."""
    crossing = point.tensors if isinstance(point, MultiCut) else point.outputs
    if not crossing:
        return [schema.tensor_spec(BOUNDARY_NAME, point.shape)]
    names = boundary_names(len(crossing), BOUNDARY_NAME)
    return [schema.tensor_spec(name, t["shape"], t["dtype"], source=t.get("source", t["name"]))
            for name, t in zip(names, crossing)]


def output_specs(last: CutPoint) -> dict:
    """The spec of the model's outputs: ``output``, or one tensor per output under its export name."""
    if not last.outputs:
        return schema.tensor_spec(OUTPUT_NAME, last.shape)
    return schema.tensors_spec(OUTPUT_NAME, [schema.tensor_spec(t["name"], t["shape"], t["dtype"], source=t["source"])
                                             for t in last.outputs])


def _postprocessed(detector: torch.nn.Module, config: ModelConfig, tail: Optional[torch.nn.Module]):
    """(tail, output spec, reference) of a detector's bundle whose tail ends with its own post-processing."""
    _, height, width = config.input_shape
    post = detection.postprocess_module(detector, height, width)
    rows = int(detector.detections_per_img)
    by = "{}.postprocess_detections".format(type(detector).__name__)
    specs = [schema.tensor_spec("boxes", (rows, 4), source=by), schema.tensor_spec("scores", (rows,), source=by),
             schema.tensor_spec("labels", (rows,), "int64", source=by)]
    outputs = schema.detections_spec(OUTPUT_NAME, specs, by, detector.score_thresh, detector.nms_thresh, rows)
    reference = detection.Reference(detector, config.mean, config.std, height, width)
    return detection.WithPostprocess(tail, post), outputs, reference


def _joined(names) -> str:
    return ",".join(names)


def input_spec(config: ModelConfig) -> dict:
    """The input tensor's spec, with the preprocessing the edge applies to raw images."""
    return dict(schema.tensor_spec(INPUT_NAME, config.input_shape), preprocess=config.preprocess_spec())


def describe_points(model_spec: str, input_shape: Optional[Tuple[int, ...]] = None, max_tensors: int = 1,
                    trace_module: Optional[str] = None, leaf_modules: Sequence[str] = (), weights: Optional[str] = None):
    """The valid split points of a model (random weights: they do not change the graph); with ``max_tensors`` > 1
    also the cuts where up to that many tensors cross (numbered ``k.j`` after point k).  ``weights``: a state-dict
    file loaded as export loads it, so that one which does not fit the model is refused here."""
    config = resolve(model_spec, input_shape, trace_module, leaf_modules)
    model, _, _ = prepare_model(config, weights, random_init=weights is None)
    traced = TracedModel(model, config.input_shape, config.leaf_modules)
    return config, [p.as_dict() for p in traced.cuts(max_tensors)]
