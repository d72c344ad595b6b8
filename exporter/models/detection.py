"""A torchvision detector's own post-processing, as a module the cloud's tail runs.

``export --trace-module backbone --postprocess`` splits a detector inside its backbone
(the part ``torch.fx`` can trace) and appends, after the tail's part of the backbone,
what the detector's ``forward`` does with the backbone's features in eval mode:

1. its head (class logits and box regression per anchor),
2. its anchor generator, for the bundle's fixed input size,
3. its ``postprocess_detections``: box decoding, score threshold, per-level top-k and
   class-wise NMS, with the detector's own settings (``score_thresh``, ``nms_thresh``,
   ``detections_per_img``).

Torchvision's detectors take a list of images and resize them first; a bundle takes a
batch of images of one fixed size, already normalised by the edge (the manifest's
preprocess), so the resize is the identity and boxes are in the input's pixels
(x1, y1, x2, y2). Each image's detections are padded to ``detections_per_img`` rows:
``boxes`` N x D x 4 (float32), ``scores`` N x D (float32), ``labels`` N x D (int64),
padding rows with label -1 and score 0, the kept rows first by the detector's order.

The module is compiled with ``torch.jit.script`` (NMS and the per-image loops depend on
the data, so tracing would freeze one image's control flow) and called from the
traced tail, so the tail exists as TorchScript only: ONNX cannot carry it.

``reference`` runs the real detector (``model(images)``, transform included, set to
the bundle's size) on de-normalised images: what the bundle is verified against.

Supported: RetinaNet and FCOS (head outputs split per feature level) and SSD /
SSDlite (not split). Faster/Mask R-CNN's region proposals are refused in one line.
"""
import warnings
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList

from ..errors import ExportError

OUTPUT_NAMES = ("boxes", "scores", "labels")
PAD_LABEL = -1


def _family(detector: nn.Module) -> str:
    from torchvision.models.detection.fcos import FCOS
    from torchvision.models.detection.retinanet import RetinaNet
    from torchvision.models.detection.ssd import SSD
    if isinstance(detector, (RetinaNet, FCOS)):
        return "per_level"
    if isinstance(detector, SSD):
        return "single"
    raise ExportError("--postprocess runs the post-processing of torchvision's RetinaNet, FCOS and SSD detectors; the "
                      "model is a {}: export it without --postprocess".format(type(detector).__name__))


def postprocess_module(detector: nn.Module, height: int, width: int) -> nn.Module:
    """The scripted post-processing of ``detector`` for ``height`` x ``width`` inputs (the module docstring)."""
    kind = PerLevel if _family(detector) == "per_level" else Single
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script's deprecation notice: TorchScript is what carries NMS
        return torch.jit.script(kind(_without_backbone(detector), height, width).eval())


def _without_backbone(detector: nn.Module) -> nn.Module:
    """A shallow copy of ``detector`` whose backbone is gone: the tail holds its weights once, in its traced part."""
    import copy
    light = copy.copy(detector)
    light._modules = dict(detector._modules)
    light._modules["backbone"] = nn.Identity()
    return light


def check_detector(detector: nn.Module, path: str, source: str, input_shape) -> None:
    """Refuse, in one line, a model whose post-processing this module cannot run, a traced part other than the
    backbone whose features that post-processing takes, or an input size the detector would pad (its transform
    pads images to multiples of ``size_divisible``, and its anchors follow the padded size)."""
    _family(detector)
    if path != "backbone":
        raise ExportError("--postprocess runs {}'s head on what its backbone returns: give --trace-module backbone "
                          "(or leave it out), not {}".format(source, path))
    divisible = int(getattr(detector.transform, "size_divisible", 1))
    height, width = input_shape[1], input_shape[2]
    if height % divisible or width % divisible:
        raise ExportError("--input-shape {}: {} pads its images to multiples of {} px, so a bundle of another size "
                          "would not compute what it computes; give a height and width that are multiples of {}".format(
                              ",".join(map(str, input_shape)), source, divisible, divisible))


class WithPostprocess(nn.Module):
    """A tail followed by a detector's post-processing: the tensors crossing the cut -> boxes, scores, labels.  At
    the backbone's last point there is no tail: the crossing tensors are the features themselves."""

    def __init__(self, tail: Optional[nn.Module], post: nn.Module):
        super().__init__()
        self.tail, self.post = tail, post

    def forward(self, *boundary):
        features = self.tail(*boundary) if self.tail is not None else boundary
        return self.post(list(features) if isinstance(features, (tuple, list)) else [features])


class Reference(object):
    """The unsplit detector itself, for verification: ``model(images)`` on the de-normalised batch, its transform
    fixed to the bundle's size (so its resize is the identity), its detections padded as the bundle pads them."""

    def __init__(self, detector: nn.Module, mean, std, height: int, width: int):
        import copy
        self.detector = copy.copy(detector)
        self.detector._modules = dict(detector._modules)
        transform = copy.copy(detector.transform)
        transform.fixed_size = (int(width), int(height))
        self.detector._modules["transform"] = transform
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        images = x * self.std + self.mean
        with torch.no_grad():
            return padded(self.detector(list(images)), int(self.detector.detections_per_img))


class _Postprocess(nn.Module):
    """What a detector does after its backbone, for a batch of ``height`` x ``width`` images."""

    def __init__(self, detector: nn.Module, height: int, width: int):
        super().__init__()
        self.detector = detector
        self.height, self.width = int(height), int(width)
        self.rows = int(detector.detections_per_img)

    def forward(self, features: List[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        n = features[0].shape[0]
        sizes: List[Tuple[int, int]] = []
        for _ in range(n):
            sizes.append((self.height, self.width))
        # the anchor generator reads only the images' shape, dtype and device: an empty tensor of that shape
        images = ImageList(features[0].new_zeros((n, 0, self.height, self.width)), sizes)
        head_outputs = self.detector.head(features)
        anchors = self.detector.anchor_generator(images, features)
        return _padded(self.decode(features, head_outputs, anchors, sizes), self.rows, features[0].device)


class PerLevel(_Postprocess):
    """RetinaNet, FCOS: head outputs and anchors are split per feature level before decoding."""

    def decode(self, features: List[Tensor], head_outputs: Dict[str, Tensor], anchors: List[Tensor],
               sizes: List[Tuple[int, int]]) -> List[Dict[str, Tensor]]:
        per_level: List[int] = []
        locations = 0
        for f in features:
            per_level.append(f.shape[2] * f.shape[3])
            locations += f.shape[2] * f.shape[3]
        per_location = head_outputs["cls_logits"].shape[1] // locations
        counts: List[int] = [c * per_location for c in per_level]
        split_outputs: Dict[str, List[Tensor]] = {}
        for k in head_outputs:
            split_outputs[k] = list(head_outputs[k].split(counts, dim=1))
        split_anchors: List[List[Tensor]] = [list(a.split(counts)) for a in anchors]
        return self.detector.postprocess_detections(split_outputs, split_anchors, sizes)


class Single(_Postprocess):
    """SSD, SSDlite: decoded from the whole head outputs and anchors."""

    def decode(self, features: List[Tensor], head_outputs: Dict[str, Tensor], anchors: List[Tensor],
               sizes: List[Tuple[int, int]]) -> List[Dict[str, Tensor]]:
        return self.detector.postprocess_detections(head_outputs, anchors, sizes)


def _padded(detections: List[Dict[str, Tensor]], rows: int, device: torch.device) -> Tuple[Tensor, Tensor, Tensor]:
    n = len(detections)
    boxes = torch.zeros((n, rows, 4), dtype=torch.float32, device=device)
    scores = torch.zeros((n, rows), dtype=torch.float32, device=device)
    labels = torch.full((n, rows), -1, dtype=torch.int64, device=device)  # PAD_LABEL
    for i, d in enumerate(detections):
        k = min(int(d["scores"].shape[0]), rows)
        boxes[i, :k] = d["boxes"][:k]
        scores[i, :k] = d["scores"][:k]
        labels[i, :k] = d["labels"][:k]
    return boxes, scores, labels


def padded(detections, rows: int) -> Tuple[Tensor, Tensor, Tensor]:
    """A detector's list of per-image dicts as the bundle's three padded tensors (on the CPU)."""
    return _padded(detections, rows, torch.device("cpu"))
