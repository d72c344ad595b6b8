"""Declarative per-model configuration (in the spirit of Optimum's ``OnnxConfig``).

A config says how to build a model, which input it takes, how raw images are
preprocessed for it, and where its default weights live.  Export, ``layers`` and
verification all read the same config.  Three kinds exist:

* ``resnet50``: the seed's CIFAR-100 ResNet-50 (weiaicunzai/pytorch-cifar100 layout);
* ``torchvision:NAME``: any torchvision classification model, weights from a file;
* ``package.module:function``: a user's function returning an ``nn.Module`` (its
  attributes ``input_shape``, ``mean``, ``std``, ``resize`` and ``leaf_modules`` say
  the rest).

Any of them may be narrowed to one of its submodules (``resolve(..., trace_module=
"backbone")``, ``--trace-module``): the part that ``torch.fx`` can trace when the
whole model cannot (a detector's per-image pre- and post-processing), exported as a
model of its own with the id ``<model id>-<module path>`` and, for a torchvision
detector, the input size and normalisation of its own transform.  With
``postprocess`` (``--postprocess``) a torchvision detector is split inside that part
(``backbone`` by default) and keeps its own head, anchors and NMS after the tail
(``detection.py``): the bundle is the detector's, with its model id, and outputs boxes.  ``leaf_modules``
(``--leaf-module``) names classes that ``torch.fx`` calls whole instead of tracing
into, where their own ``forward`` cannot be traced (YOLOv8's ``C2f`` iterates over a
tensor's chunks): no point falls inside them.

Each config's model id (what its bundles' manifests carry, and the edge's
``--model`` finds) comes from the spec by ``runtime.bundle.schema.model_id``, the
rule the runtime applies too.
"""
import dataclasses
import importlib
import os
from typing import Callable, Optional, Sequence, Tuple

from torch import nn

from runtime.bundle.schema import model_id as model_id_of

from ..errors import ExportError

CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DETECTOR_BACKBONE = "backbone"  # what --postprocess splits when --trace-module is not given


@dataclasses.dataclass
class ModelConfig:
    """What the exporter needs to know about one model."""

    model_id: str
    source: str
    builder: Callable[[], nn.Module]
    input_shape: Tuple[int, ...]
    mean: Optional[Sequence[float]] = None
    std: Optional[Sequence[float]] = None
    resize: Optional[int] = None
    default_weights: Optional[str] = None
    notes: str = ""
    leaf_modules: Tuple[str, ...] = ()  # classes torch.fx calls whole instead of tracing into (``--leaf-module``)
    # ``--postprocess``: the submodule traced and split; the whole detector is built, its heads, anchors and NMS
    # run after the tail
    trace_path: Optional[str] = None

    def __post_init__(self):
        self.input_shape = tuple(self.input_shape)
        self.mean = tuple(self.mean) if self.mean is not None else None
        self.std = tuple(self.std) if self.std is not None else None
        self.leaf_modules = tuple(self.leaf_modules)

    def build(self) -> nn.Module:
        model = self.builder()
        if not isinstance(model, nn.Module):
            raise ExportError("{} returned {}, not a torch.nn.Module".format(self.source, type(model).__name__))
        return model.eval()

    @property
    def postprocess(self) -> bool:
        return self.trace_path is not None

    def traced_part(self, model: nn.Module) -> nn.Module:
        """What is traced and split of a built ``model``: the model, or with ``postprocess`` its ``trace_path``."""
        return model.get_submodule(self.trace_path) if self.trace_path else model

    def preprocess_spec(self) -> dict:
        """How the runtime turns a uint8 HxWxC RGB image into this model's input (recorded in the manifest)."""
        _, height, width = self.input_shape
        return {
            "layout": "NCHW",
            "channel_order": "RGB",
            # resize the shorter side to `resize`, then centre-crop to `crop`; null = the image is used as it is
            "resize": self.resize,
            "crop": [height, width] if self.resize else None,
            "scale": 1.0 / 255.0,
            "mean": list(self.mean) if self.mean else None,
            "std": list(self.std) if self.std else None,
        }


def _seed_resnet50() -> ModelConfig:
    from .cifar_resnet import resnet50
    return ModelConfig(
        model_id_of("resnet50"), "seed:resnet50 (weiaicunzai/pytorch-cifar100)", resnet50, (3, 32, 32),
        CIFAR100_MEAN, CIFAR100_STD, resize=None, default_weights=os.path.join("weights", "resnet50-best.pth"),
        notes="the seed's CIFAR-100 ResNet-50; split points 0..22 as in the seed")


def _torchvision(name: str, input_shape: Optional[Tuple[int, ...]]) -> ModelConfig:
    import torchvision.models as tvm
    classification = set(tvm.list_models(module=tvm))
    segmentation = set(tvm.list_models(module=tvm.segmentation))
    detection = set(tvm.list_models(module=tvm.detection))  # built, so that their tracing says what stops it
    if name not in classification | segmentation | detection:
        raise ExportError("unknown torchvision model {!r}; known: {}".format(
            name, ", ".join(sorted(classification | segmentation | detection))))
    shape = input_shape or (3, 224, 224)
    spec = "torchvision:" + name
    if name in segmentation | detection:  # no ImageNet backbone download either; masks are not resized
        return ModelConfig(
            model_id_of(spec), spec, lambda: tvm.get_model(name, weights=None, weights_backbone=None), shape,
            IMAGENET_MEAN, IMAGENET_STD, resize=None,
            notes="torchvision {} {}; weights from --weights (nothing is downloaded)".format(
                "segmentation" if name in segmentation else "detection", name))
    resize = int(round(shape[1] / 0.875))
    return ModelConfig(
        model_id_of(spec), spec, lambda: tvm.get_model(name, weights=None), shape,
        IMAGENET_MEAN, IMAGENET_STD, resize=resize,
        notes="torchvision {}; weights from --weights (nothing is downloaded)".format(name))


def _import_path(spec: str, input_shape: Optional[Tuple[int, ...]]) -> ModelConfig:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ExportError("cannot import {!r} for --model {} ({}); is it on PYTHONPATH?".format(
            module_name, spec, exc))
    builder = getattr(module, attr, None)
    if not callable(builder):
        raise ExportError("{} has no function {!r}; --model wants package.module:function".format(module_name, attr))
    shape = input_shape or getattr(builder, "input_shape", None)
    if shape is None:
        raise ExportError("--model {} needs --input-shape C,H,W (or an `input_shape` attribute on {})".format(
            spec, attr))
    return ModelConfig(model_id_of(spec), spec, builder, tuple(shape), getattr(builder, "mean", None),
                       getattr(builder, "std", None), resize=getattr(builder, "resize", None),
                       notes="user model {}".format(spec), leaf_modules=getattr(builder, "leaf_modules", ()))


def resolve(spec: str, input_shape: Optional[Tuple[int, ...]] = None, trace_module: Optional[str] = None,
            leaf_modules: Sequence[str] = (), postprocess: bool = False) -> ModelConfig:
    """Turn a --model value (and --trace-module, --leaf-module, --postprocess) into its config; raise ExportError
    for an unknown one."""
    config = _resolve(spec, input_shape)
    if postprocess:
        config = _with_postprocess(config, trace_module or DETECTOR_BACKBONE, input_shape)
    elif trace_module:
        config = _narrowed(config, trace_module, input_shape)
    config.leaf_modules = tuple(config.leaf_modules) + tuple(m for m in leaf_modules if m not in config.leaf_modules)
    if config.leaf_modules:  # the manifest's model.notes says how it was traced
        config.notes = "{}; traced with {} called whole".format(config.notes, ", ".join(config.leaf_modules))
    return config


def _submodule(whole: nn.Module, path: str, source: str) -> nn.Module:
    try:
        return whole.get_submodule(path)
    except AttributeError:
        children = ", ".join(name for name, _ in whole.named_children()) or "none"
        raise ExportError("--trace-module {}: {} has no such submodule; its children: {}".format(
            path, source, children))


def _input_of(whole: nn.Module, config: ModelConfig, input_shape: Optional[Tuple[int, ...]]):
    """(mean, std, input shape) of a model that may normalise and resize its images itself (a torchvision
    detector's transform)."""
    transform = getattr(whole, "transform", None)
    mean, std, shape = config.mean, config.std, input_shape or config.input_shape
    if transform is not None and hasattr(transform, "image_mean"):
        mean, std = tuple(transform.image_mean), tuple(transform.image_std)
        fixed = getattr(transform, "fixed_size", None)
        if input_shape is None and fixed:
            shape = (3,) + tuple(fixed)
    return mean, std, shape


def _with_postprocess(config: ModelConfig, path: str, input_shape: Optional[Tuple[int, ...]]) -> ModelConfig:
    """``config``'s detector split inside its backbone, its own post-processing after the tail (``--postprocess``,
    ``detection.py``): the whole detector is built and takes the weights; the model id stays the detector's."""
    from .detection import check_detector
    whole = config.build()
    mean, std, shape = _input_of(whole, config, input_shape)
    check_detector(whole, path, config.source, shape)  # path is the backbone, which every such detector has
    return dataclasses.replace(
        config, input_shape=shape, mean=mean, std=std, resize=None, trace_path=path,
        source="{} --postprocess".format(config.source),
        notes="{}; split inside its {}, its head, anchors and NMS ({}'s own) run on the cloud after the tail".format(
            config.notes, path, type(whole).__name__))


def _narrowed(config: ModelConfig, path: str, input_shape: Optional[Tuple[int, ...]]) -> ModelConfig:
    """``config``'s model narrowed to its submodule ``path`` (see the module's docstring)."""
    whole = config.build()
    part = _submodule(whole, path, config.source)
    mean, std, shape = _input_of(whole, config, input_shape)
    build = config.builder

    def builder():
        return build().get_submodule(path)
    return ModelConfig("{}-{}".format(config.model_id, path.replace(".", "-")),
                       "{} --trace-module {}".format(config.source, path), builder, shape, mean, std,
                       resize=None, notes="{}, its {} only ({}): what it returns is this model's output".format(
                           config.notes, path, type(part).__name__))


def _resolve(spec: str, input_shape: Optional[Tuple[int, ...]]) -> ModelConfig:
    if spec == "resnet50":
        config = _seed_resnet50()
        if input_shape and tuple(input_shape) != config.input_shape:
            config.input_shape = tuple(input_shape)
        return config
    if spec.startswith("torchvision:"):
        return _torchvision(spec.split(":", 1)[1], input_shape)
    if spec.startswith("torchvision-"):  # the model id, as the edge's commands take it too
        return _torchvision(spec.split("-", 1)[1], input_shape)
    if ":" in spec:
        return _import_path(spec, input_shape)
    raise ExportError("unknown model {!r}; use resnet50 (the seed's), torchvision:NAME, "
                      "or package.module:function".format(spec))
