"""How a run's outputs are scored against its labels: classification, or segmentation.

The task follows from the bundle's output and the dataset's labels (``for_run``):

* **classification**: the output is N x C scores and the labels N class ids. A sample's
  prediction is its top class; the score is the share of samples predicted right (the
  seed's ``Accuracy``). Per sample the report keeps the predicted class and the label.
* **segmentation**: the output is N x C x H x W scores per pixel and the labels N x H x W
  masks of class ids at the model's input size, 255 marking a pixel to ignore (Pascal
  VOC's convention). A pixel's prediction is its top class. All pixels of the run add up
  in one C x C confusion matrix (label by prediction), from which come the pixel
  accuracy (right pixels over labelled pixels: the ``Accuracy`` line) and the mean IoU
  (for each class that occurs in the labels or the predictions: right pixels over the
  union of labelled and predicted ones, averaged). Per sample the report keeps the
  sample's pixel accuracy and its number of labelled pixels (masks are not written).
* **detection**: the bundle's tail ends with the detector's own post-processing
  (``output.postprocess``): per image ``boxes`` D x 4, ``scores`` D, ``labels`` D, rows with
  label -1 unused. With ground truth (an npz's ``boxes`` N x M x 4, x1 y1 x2 y2 in the
  model's input pixels, and ``y`` N x M class ids, -1 where an image has fewer boxes) the
  score is the mean average precision at IoU 0.5 (Pascal VOC's: per class, detections of
  all images by falling score, each a true positive when its best-overlapping
  ground-truth box of that class overlaps it by IoU >= 0.5 and is not taken yet; AP is
  the area under the precision envelope over recall; mAP the mean over the classes that
  have ground truth). Per sample the report keeps its number of detections and of
  ground-truth boxes. Without ground truth (``synthetic``) only the detections are counted.

Python 3.6 syntax: this module runs on the Jetson.
"""
import numpy as np

from runtime.errors import UserError

IGNORE = 255  # a mask value that marks a pixel left out of the scores


def for_run(output_shape, labels, postprocess=None, boxes=None):
    """The scorer for a bundle whose (first) output, batch first, is ``output_shape`` and a dataset whose labels are
    ``labels`` (an array: N class ids, or N x H x W masks, or with ``boxes`` N x M box classes); ``postprocess``:
    the bundle's ``output.postprocess``. A UserError where they do not fit."""
    labels = np.asarray(labels)
    if postprocess is not None and postprocess.get("kind") == "detections":
        return Detection(boxes is not None)
    if boxes is not None:
        raise UserError("the dataset holds ground-truth boxes, but the model outputs {} per sample, not detections; "
                        "export the detector with --postprocess".format("x".join(map(str, output_shape[1:]))))
    per_sample = list(output_shape[1:])
    if labels.ndim <= 1:
        if len(per_sample) == 3:
            raise UserError("the model outputs per-pixel scores ({}) but the dataset's labels are class ids; give "
                            "masks: an npz whose 'y' is N x {} x {} class ids (255: ignore)".format(
                                "x".join(map(str, per_sample)), per_sample[1], per_sample[2]))
        return Classification()
    if len(per_sample) != 3 or list(labels.shape[1:]) != per_sample[1:]:
        raise UserError("the dataset's labels are {} masks, but the model outputs {} per sample; masks fit a "
                        "segmentation model whose output is C x H x W with the masks' H x W".format(
                            "x".join(map(str, labels.shape[1:])), "x".join(map(str, per_sample))))
    classes = per_sample[0]
    bad = labels[(labels != IGNORE) & ((labels < 0) | (labels >= classes))]
    if bad.size:
        raise UserError("mask value {} is not a class id of this model (0..{}) nor {} (ignore); check the "
                        "dataset's 'y'".format(int(bad.flat[0]), classes - 1, IGNORE))
    return Segmentation(classes)


class Classification(object):
    """Top-1 class per sample; accuracy."""

    task = "classification"
    whole_output = False  # scored on the first output (a segmentation model's "out", not its "aux")

    def __init__(self):
        self.right = 0
        self.counted = 0

    def add(self, output, labels):
        """(predictions, labels) per sample, as the report keeps them, for a batch's ``output``."""
        predictions = output.reshape(len(labels), -1).argmax(axis=1)
        self.right += int((predictions == labels).sum())
        self.counted += len(labels)
        return [int(p) for p in predictions], [int(l) for l in labels]

    @staticmethod
    def describe(prediction, label):
        return "Prediction: {} / Ground Truth: {}".format(prediction, label)

    def summary(self):
        return {"accuracy": self.right / float(self.counted) if self.counted else 0.0}


class Segmentation(object):
    """Top class per pixel; pixel accuracy and mean IoU from one confusion matrix."""

    task = "segmentation"
    whole_output = False

    def __init__(self, classes):
        self.classes = classes
        self.confusion = np.zeros((classes, classes), dtype=np.int64)  # [label, prediction]

    def add(self, output, labels):
        """(pixel accuracy, labelled pixels) per sample, for a batch's ``output`` (N x C x H x W)."""
        predictions = output.argmax(axis=1)
        accuracies, counts = [], []
        for pred, mask in zip(predictions, labels):
            keep = mask != IGNORE
            label, guess = mask[keep].astype(np.int64), pred[keep].astype(np.int64)
            self.confusion += np.bincount(label * self.classes + guess,
                                          minlength=self.classes * self.classes).reshape(self.classes, self.classes)
            counts.append(int(keep.sum()))
            accuracies.append(float((label == guess).sum()) / counts[-1] if counts[-1] else 0.0)
        return accuracies, counts

    @staticmethod
    def describe(prediction, label):
        return "Pixel accuracy: {:.4f} of {} labelled pixels".format(prediction, label)

    def summary(self):
        confusion = self.confusion
        right = np.diag(confusion).astype(np.float64)
        union = confusion.sum(axis=0) + confusion.sum(axis=1) - right
        present = union > 0
        iou = np.where(present, right / np.maximum(union, 1), 0.0)
        return {"accuracy": float(right.sum() / confusion.sum()) if confusion.sum() else 0.0,
                "miou": float(iou[present].mean()) if present.any() else 0.0,
                "iou_per_class": [float(v) if p else None for v, p in zip(iou, present)],
                "classes_present": int(present.sum())}


IOU_MATCH = 0.5


class Detection(object):
    """Detections per image; with ground truth, mAP at IoU 0.5 (the module's docstring)."""

    task = "detection"
    whole_output = True  # boxes, scores and labels

    def __init__(self, has_truth):
        self.has_truth = has_truth
        self.images = 0
        self.detections = 0
        self.ranked = {}  # class -> [(score, true positive)] over the run
        self.truths = {}  # class -> ground-truth boxes over the run

    def add(self, outputs, targets):
        """(detections, ground-truth boxes) per image, for a batch's (boxes, scores, labels) and its targets
        (``Dataset.targets``: (classes, boxes) with ground truth, else labels that are not used)."""
        boxes, scores, labels = (np.asarray(t) for t in outputs[:3])
        found, truths = [], []
        for i in range(len(labels)):
            keep = labels[i] >= 0
            found.append(int(keep.sum()))
            self.images += 1
            self.detections += found[-1]
            if not self.has_truth:
                truths.append(0)
                continue
            true_classes, true_boxes = targets[0][i], targets[1][i]
            real = true_classes >= 0
            truths.append(int(real.sum()))
            self._match(boxes[i][keep], scores[i][keep], labels[i][keep], true_boxes[real], true_classes[real])
        return found, truths

    def _match(self, boxes, scores, labels, true_boxes, true_classes):
        for c in set(labels.tolist()) | set(true_classes.tolist()):
            mine, truth = labels == c, true_boxes[true_classes == c]
            self.truths[c] = self.truths.get(c, 0) + len(truth)
            taken = np.zeros(len(truth), dtype=bool)
            ranked = self.ranked.setdefault(c, [])
            order = np.argsort(-scores[mine], kind="stable")
            for box, score in zip(boxes[mine][order], scores[mine][order]):
                hit = False
                if len(truth):
                    overlaps = iou(box, truth)
                    best = int(overlaps.argmax())
                    if overlaps[best] >= IOU_MATCH and not taken[best]:
                        taken[best] = hit = True
                ranked.append((float(score), hit))

    @staticmethod
    def describe(prediction, label):
        return "Detections: {} / Ground-truth boxes: {}".format(prediction, label)

    def summary(self):
        per_image = self.detections / float(self.images) if self.images else 0.0
        if not self.has_truth:
            return {"accuracy": 0.0, "map50": None, "detections_per_image": per_image, "classes_with_truth": 0}
        aps = [average_precision(self.ranked.get(c, []), n) for c, n in sorted(self.truths.items()) if n > 0]
        map50 = float(np.mean(aps)) if aps else 0.0
        return {"accuracy": map50, "map50": map50, "detections_per_image": per_image, "classes_with_truth": len(aps)}


def iou(box, boxes):
    """IoU of one x1 y1 x2 y2 box with each of ``boxes`` (M x 4)."""
    x1, y1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x2, y2 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def average_precision(ranked, truths):
    """Area under the precision envelope over recall, for (score, true positive) pairs and ``truths`` boxes."""
    if not ranked:
        return 0.0
    hits = np.array([hit for _, hit in sorted(ranked, key=lambda r: -r[0])], dtype=np.float64)
    tp = np.cumsum(hits)
    recall = np.concatenate([[0.0], tp / truths, [1.0]])
    precision = np.concatenate([[0.0], tp / np.arange(1, len(hits) + 1), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))
