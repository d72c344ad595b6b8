"""YOLOv8n (ultralytics, built from its own yaml, random init: nothing is downloaded) up to its Detect head, as a
model for ``--model yolov8_features:yolov8n`` (with ``bench/`` on PYTHONPATH; needs ``pip install ultralytics``).

torch.fx cannot trace ultralytics' DetectionModel whole: its C2f blocks iterate over a tensor's chunks
(``list(x.chunk(2, 1))``) and its Detect head unpacks feature maps' shapes to make anchors.  This module runs the
layers before Detect, as ``DetectionModel._predict_once`` does, and returns the three feature maps Detect takes
(P3, P4, P5); ``leaf_modules`` makes the C2f blocks whole calls (``--leaf-module C2f``).  Detect and its
post-processing would stay on the cloud, unexported.
"""
import torch


def yolov8n():
    from ultralytics.nn.tasks import DetectionModel
    return Features(DetectionModel("yolov8n.yaml", verbose=False)).eval()


yolov8n.input_shape = (3, 320, 320)
yolov8n.mean = (0.0, 0.0, 0.0)  # ultralytics takes RGB scaled to 0..1, nothing subtracted
yolov8n.std = (1.0, 1.0, 1.0)
yolov8n.leaf_modules = ("C2f",)


class Features(torch.nn.Module):
    """The layers of a DetectionModel before its Detect head; returns what Detect takes."""

    def __init__(self, model):
        super().__init__()
        self.model = model.model[:-1]
        self.save, self.sources = model.save, model.model[-1].f

    def forward(self, x):
        y = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return tuple(y[j] for j in self.sources)
