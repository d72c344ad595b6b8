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

Python 3.6 syntax: this module runs on the Jetson.
"""
import numpy as np

from runtime.errors import UserError

IGNORE = 255  # a mask value that marks a pixel left out of the scores


def for_run(output_shape, labels):
    """The scorer for a bundle whose output (batch first, None for the batch) is ``output_shape`` and a dataset
    whose labels are ``labels`` (an array: N class ids, or N x H x W masks); a UserError where they do not fit."""
    labels = np.asarray(labels)
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
