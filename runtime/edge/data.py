"""Datasets for the edge and the manifest's preprocessing, with numpy only (Pillow for image files).

A dataset is a set of raw images (uint8, H x W x C, RGB) and integer labels; the
manifest's ``input.preprocess`` turns a batch of them into the model's float32
NCHW input.  ``--dataset`` takes:

* ``cifar100`` / ``cifar10``: the test set from the binary archive (no pickle),
  read from ``--data-dir`` (default ``./data``), downloaded there with its MD5
  checked when absent and the machine is online;
* ``npz:PATH``: arrays ``x`` (uint8, N x H x W x C) and ``y`` (integer labels, or for a segmentation model
  N x H x W masks at the model's input size; for a detector, ``boxes`` N x M x 4 ground-truth boxes in the
  model's input pixels and ``y`` N x M their class ids, -1 past an image's boxes: edge/scoring.py);
* ``folder:PATH``: one sub-folder per class (sorted names = label order), one image per file;
* ``synthetic``: deterministic random images and labels (``--seed``).

Python 3.6 syntax: this module runs on the Jetson.
"""
import hashlib
import os
import shutil
import tarfile
import zipfile

import numpy as np

from runtime.errors import UserError, file_start

CIFAR = {
    # name: (url, md5, member inside the archive, label bytes per record, label byte used)
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz", "03b5dce01913d631647c71ecec9e9cb8",
                 "cifar-100-binary/test.bin", 2, 1),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530",
                "cifar-10-batches-bin/test_batch.bin", 1, 0),
}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp")


class Dataset(object):
    """Images and labels; ``images(indices)`` returns uint8 N x H x W x C at the model's input size."""

    def __init__(self, name, labels, load, source, boxes=None):
        self.name = name
        self.labels = np.asarray(labels, dtype=np.int64)
        self.boxes = None if boxes is None else np.asarray(boxes, dtype=np.float32)  # a detector's ground truth
        self._load = load
        self.source = source

    def targets(self, indices):
        """What the samples at ``indices`` are scored against: their labels, or (classes, boxes) for a detector."""
        if self.boxes is None:
            return self.labels[indices]
        return self.labels[indices], self.boxes[indices]

    def __len__(self):
        return len(self.labels)

    def images(self, indices):
        return self._load(indices)


def _input_hw(input_spec):
    shape = input_spec["shape"]
    if len(shape) != 4:
        raise UserError("the bundle's input {} is not an image batch (N, C, H, W); image datasets do not fit it".format(
            shape))
    return shape[1], shape[2], shape[3]


# ---------------------------------------------------------------- preprocessing

def fit_images(images, preprocess, height, width):
    """Resize/crop uint8 images as the manifest says, when they are not already the input size (needs Pillow)."""
    if images.shape[1:3] == (height, width):
        return images
    try:
        from PIL import Image
    except ImportError:
        raise UserError("images of {}x{} must be resized to {}x{}: install Pillow (pip install pillow)".format(
            images.shape[1], images.shape[2], height, width))
    out = np.empty((len(images), height, width, images.shape[3]), dtype=np.uint8)
    for i, img in enumerate(images):
        out[i] = _fit_one(Image.fromarray(img.squeeze()) if img.shape[2] == 1 else Image.fromarray(img),
                          preprocess, height, width).reshape(height, width, -1)
    return out


def _fit_one(image, preprocess, height, width):
    from PIL import Image
    resize = preprocess.get("resize")
    if resize:  # shorter side to `resize`, then centre crop
        w, h = image.size
        scale = float(resize) / min(w, h)
        image = image.resize((max(width, int(round(w * scale))), max(height, int(round(h * scale)))),
                             Image.BILINEAR)
        w, h = image.size
        left, top = (w - width) // 2, (h - height) // 2
        image = image.crop((left, top, left + width, top + height))
    else:
        image = image.resize((width, height), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def preprocess_batch(images, preprocess):
    """uint8 N x H x W x C -> float32 N x C x H x W: scale, then (x - mean) / std per channel."""
    x = images.astype(np.float32)
    x *= np.float32(preprocess.get("scale", 1.0))
    mean, std = preprocess.get("mean"), preprocess.get("std")
    if mean is not None:
        x -= np.asarray(mean, dtype=np.float32)
    if std is not None:
        x /= np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


# ---------------------------------------------------------------- sources

def _in_memory(name, x, y, source, preprocess, hw, boxes=None):
    def load(indices):
        return fit_images(x[indices], preprocess, hw[0], hw[1])
    return Dataset(name, y, load, source, boxes)


def _md5(path):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch_cifar(name, data_dir):
    url, md5, member, _, _ = CIFAR[name]
    target = os.path.join(data_dir, member)
    if os.path.isfile(target):
        return target
    archive = os.path.join(data_dir, url.rsplit("/", 1)[1])
    if not os.path.isfile(archive):
        made = _first_missing(data_dir)  # what a failed download removes again: nothing is left behind
        partial = archive + ".part"
        try:
            from urllib.request import urlopen
            with urlopen(url, timeout=30) as response:  # nothing is created before the server answers
                os.makedirs(data_dir, exist_ok=True)
                with open(partial, "wb") as f:
                    shutil.copyfileobj(response, f, 1 << 20)
            os.rename(partial, archive)
        except Exception as exc:
            if made is not None:
                shutil.rmtree(made, ignore_errors=True)
            elif os.path.isfile(partial):
                os.remove(partial)
            raise UserError("{} is not in {} and cannot be downloaded from {} ({}); download it elsewhere and put "
                            "the archive (or its {}) in {}".format(name, data_dir, url, str(exc)[:120], member,
                                                                  data_dir))
    if _md5(archive) != md5:
        raise UserError("{} has MD5 {}, expected {}: it is corrupt or incomplete; delete it and retry".format(
            archive, _md5(archive), md5))
    with tarfile.open(archive, "r:gz") as tar:  # extract only the test file, to a path we choose
        source = tar.extractfile(member)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target + ".part", "wb") as f:
            shutil.copyfileobj(source, f)
    os.rename(target + ".part", target)
    return target


def _first_missing(path):
    """The outermost directory of ``path`` that does not exist yet (None where ``path`` does)."""
    missing = None
    path = os.path.abspath(path)
    while not os.path.isdir(path):
        missing, path = path, os.path.dirname(path)
    return missing


def _cifar(name, data_dir, preprocess, hw):
    path = _fetch_cifar(name, data_dir)
    _, _, _, label_bytes, label_at = CIFAR[name]
    record = label_bytes + 3072
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size % record:
        raise UserError("{} is not a CIFAR binary file ({} bytes is not a multiple of {})".format(path, raw.size, record))
    raw = raw.reshape(-1, record)
    labels = raw[:, label_at].astype(np.int64)
    images = raw[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return _in_memory(name, images, labels, path, preprocess, hw)


def _not_npz(path, why):
    return UserError("{} is not an .npz archive of arrays x and y: {}; make one with numpy.savez(PATH, x=images, "
                     "y=labels) (uint8 N x H x W x C images, N integer labels)".format(path, why))


def _npz_archive(path):
    """The .npz archive at ``path``, opened (an array is read when it is taken), holding x and y; or the UserError
    that says what the file is instead.  numpy's own message for a file that is not one suggests unpickling it."""
    if not os.path.isfile(path):
        raise UserError("dataset file {} not found; pass --dataset npz:PATH of an existing .npz".format(path))
    if not zipfile.is_zipfile(path):
        raise _not_npz(path, _not_zip(path))
    try:
        archive = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise _not_npz(path, "it is a damaged zip archive ({})".format(exc))
    missing = [name for name in ("x", "y") if name not in archive.files]
    if missing:
        archive.close()
        raise _not_npz(path, "it holds {} and no {}".format(", ".join(archive.files) or "nothing", " or ".join(missing)))
    return archive


def _not_zip(path):
    """What a file that is not a zip archive is, as far as its first bytes say."""
    with open(path, "rb") as f:
        head = f.read(6)
    if head.startswith(b"PK\x03\x04"):
        return "it is a truncated or damaged zip archive (it has no zip directory at its end)"
    if head == b"\x93NUMPY":
        return "it is one array saved by numpy.save, not an archive of several"
    return "it is not a zip archive ({})".format(file_start(path))


def _npz_array(archive, name, path):
    try:
        return archive[name]
    except (ValueError, zipfile.BadZipFile, OSError, EOFError) as exc:
        if "bject arrays" in str(exc):  # numpy's message says allow_pickle=True would load it: it never is
            raise _not_npz(path, "its array {} holds Python objects (dtype object), which are never unpickled".format(
                name))
        raise _not_npz(path, "its array {} cannot be read ({})".format(name, exc))


def _npz(path, preprocess, hw):
    with _npz_archive(path) as archive:
        x, y = _npz_array(archive, "x", path), _npz_array(archive, "y", path)
        boxes = _npz_array(archive, "boxes", path) if "boxes" in archive.files else None
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != hw[2]:
        raise UserError("{}: 'x' must be uint8 N x H x W x {} raw images, got {} {}".format(
            path, hw[2], x.dtype, x.shape))
    if boxes is not None:
        _check_boxes(path, x, y, boxes, hw)
    elif y.ndim == 3 and len(y) == len(x) and np.issubdtype(y.dtype, np.integer):  # segmentation masks
        if y.shape[1:] != x.shape[1:3] or x.shape[1:3] != hw[:2]:
            raise UserError("{}: masks 'y' ({}) must be at the model's input size {}x{}, as the images 'x' ({}): "
                            "masks are not resized".format(path, "x".join(map(str, y.shape[1:])), hw[0], hw[1],
                                                          "x".join(map(str, x.shape[1:3]))))
    elif y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise UserError("{}: 'y' must be {} integer labels (or {} x H x W masks), got {} {}".format(
            path, len(x), len(x), y.dtype, y.shape))
    return _in_memory("npz:" + path, x, y, path, preprocess, hw, boxes)


def _check_boxes(path, x, y, boxes, hw):
    """A detector's ground truth: ``boxes`` N x M x 4 and ``y`` N x M, images at the model's input size."""
    if boxes.ndim != 3 or boxes.shape[0] != len(x) or boxes.shape[2] != 4 or not np.issubdtype(boxes.dtype, np.number):
        raise UserError("{}: 'boxes' must be {} x M x 4 (x1, y1, x2, y2 per ground-truth box), got {} {}".format(
            path, len(x), boxes.dtype, boxes.shape))
    if y.shape != boxes.shape[:2] or not np.issubdtype(y.dtype, np.integer):
        raise UserError("{}: with 'boxes' {}, 'y' must be {} integer class ids (-1: no box), got {} {}".format(
            path, "x".join(map(str, boxes.shape)), "x".join(map(str, boxes.shape[:2])), y.dtype, y.shape))
    if x.shape[1:3] != hw[:2]:
        raise UserError("{}: images 'x' ({}) must be at the model's input size {}x{}: boxes are not rescaled".format(
            path, "x".join(map(str, x.shape[1:3])), hw[0], hw[1]))


def _folder(path, preprocess, hw):
    if not os.path.isdir(path):
        raise UserError("dataset folder {} not found".format(path))
    classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    files, labels = [], []
    for label, cls in enumerate(classes):
        for f in sorted(os.listdir(os.path.join(path, cls))):
            if f.lower().endswith(IMAGE_EXTENSIONS):
                files.append(os.path.join(path, cls, f))
                labels.append(label)
    if not files:
        raise UserError("{} holds no images in class sub-folders ({})".format(path, ", ".join(IMAGE_EXTENSIONS)))
    try:
        from PIL import Image
    except ImportError:
        raise UserError("--dataset folder: needs Pillow (pip install pillow)")
    mode = "RGB" if hw[2] == 3 else "L"

    def load(indices):
        out = np.empty((len(indices), hw[0], hw[1], hw[2]), dtype=np.uint8)
        for i, idx in enumerate(indices):
            with Image.open(files[idx]) as img:
                out[i] = _fit_one(img.convert(mode), preprocess, hw[0], hw[1]).reshape(hw[0], hw[1], hw[2])
        return out
    return Dataset("folder:" + path, labels, load, path)


def _synthetic(n, num_classes, seed, hw, mask_hw=None):
    rng = np.random.RandomState(seed)
    x = rng.randint(0, 256, size=(n, hw[0], hw[1], hw[2])).astype(np.uint8)
    y = rng.randint(0, max(num_classes, 1), size=(n,) + tuple(mask_hw or ()))
    return Dataset("synthetic", y, lambda indices: x[indices], "seed {}".format(seed))


def check_source(spec, data_dir="data"):
    """Refuse a ``--dataset`` that names no dataset, or a local file or folder that is not there, and make a CIFAR
    test set present in ``data_dir`` (downloaded if absent), before anything connects (the bundle's input spec, which
    the rest of the checks need, comes from the cloud)."""
    if spec in CIFAR:
        _fetch_cifar(spec, data_dir)
        return
    if spec == "synthetic":
        return
    kind, _, path = spec.partition(":")
    if kind == "npz" and path:
        _npz_archive(path).close()  # its listing only: the arrays are read once the bundle is known
        return
    if kind == "folder" and path:
        if not os.path.isdir(path):
            raise UserError("dataset folder {} not found; pass --dataset folder:DIR of an existing folder".format(path))
        return
    raise UserError("unknown dataset {!r}; use cifar100, cifar10, npz:PATH, folder:PATH or synthetic".format(spec))


def open_dataset(spec, input_spec, num_classes, limit=None, seed=0, data_dir="data", output_shape=None):
    """The dataset named by ``--dataset`` for a bundle's input spec.  With the bundle's ``output_shape`` (batch first)
    of a segmentation model (N x C x H x W), ``synthetic`` has masks of C classes for labels."""
    if output_shape is not None and len(output_shape) == 4:
        num_classes, mask_hw = output_shape[1], tuple(output_shape[2:])
    else:
        mask_hw = None
    channels, height, width = _input_hw(input_spec)
    hw = (height, width, channels)
    preprocess = input_spec.get("preprocess") or {}
    if spec in CIFAR:
        return _cifar(spec, data_dir, preprocess, hw)
    if spec == "synthetic":
        return _synthetic(limit or 100, num_classes, seed, hw, mask_hw)
    kind, _, path = spec.partition(":")
    if kind == "npz" and path:
        return _npz(path, preprocess, hw)
    if kind == "folder" and path:
        return _folder(path, preprocess, hw)
    raise UserError("unknown dataset {!r}; use cifar100, cifar10, npz:PATH, folder:PATH or synthetic".format(spec))


def batches(dataset, batch_size, limit=None, shuffle=False, seed=0):
    """Index arrays of the samples to run, in batches."""
    order = np.arange(len(dataset))
    if shuffle:
        np.random.RandomState(seed).shuffle(order)
    if limit is not None:
        order = order[:limit]
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
