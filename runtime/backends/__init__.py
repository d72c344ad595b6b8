"""Backends run one compiled part (head or tail) of a bundle: a small interface and a registry.

Every backend has ``run(x) -> y`` on numpy arrays (blocking until the result is on
the host, so timers around it are honest on CUDA too), ``name`` and ``provider``
(what actually executes it, e.g. ``CUDAExecutionProvider`` or ``cuda:0``).

Python 3.6 syntax.  torch is imported only by the TorchScript backend, when used.
"""
from runtime.errors import UserError

BACKENDS = ("onnx", "torchscript")
DEVICES = ("auto", "cpu", "cuda")
FORMAT = {"onnx": "onnx", "torchscript": "torchscript"}  # the file format each backend runs: the one map


def format_of(backend):
    """The file format ``backend`` runs (a UserError naming the choices for an unknown one)."""
    if backend not in FORMAT:
        raise UserError("unknown backend {!r}; choose from {}".format(backend, ", ".join(BACKENDS)))
    return FORMAT[backend]


class PassThrough(object):
    """Stands in for the part a split leaves empty (no head at split 0, no tail at the last split)."""

    name = "none"
    provider = "none"

    def run(self, x):
        return x


def backend_for(manifest, part, backend):
    """The backend that runs ``part`` of a bundle: ``backend``, unless the part exists in one other format only (a
    tail that ends with a detector's NMS is TorchScript), then that format's backend.  The cloud serves such a bundle
    whatever its --backend; an edge's head is always asked for in the format it chose."""
    entry = manifest.part(part)
    formats = sorted(entry["files"]) if entry is not None else []
    if entry is None or format_of(backend) in formats or len(formats) != 1:
        return backend
    return next(b for b, f in FORMAT.items() if f == formats[0])


def load_part(manifest, part, backend="onnx", device="auto", threads=0, cuda_graphs=False):
    """Load the ``part`` ('head' or 'tail') of a bundle with the chosen backend, or a PassThrough."""
    if backend not in BACKENDS:
        raise UserError("unknown backend {!r}; choose from {}".format(backend, ", ".join(BACKENDS)))
    if device not in DEVICES:
        raise UserError("unknown device {!r}; choose from {}".format(device, ", ".join(DEVICES)))
    if manifest.part(part) is None:
        return PassThrough()
    fmt = format_of(backend)
    return load_file(manifest.file_path(part, fmt), backend, device, threads, manifest.directory,
                     manifest.part(part)["files"][fmt].get("sha256"), cuda_graphs)


def load_file(path, backend="onnx", device="auto", threads=0, cache_dir=".", sha256=None, cuda_graphs=False):
    """Load one compiled file (a head, a tail, or a profiling segment) with the chosen backend.

    ``sha256`` (the manifest's, of a verified file) lets onnxruntime on the CPU keep its
    optimised graph beside the bundle (see ort.py).  ``cuda_graphs``: replay captured CUDA
    graphs (TorchScript on CUDA only)."""
    if cuda_graphs and (backend != "torchscript" or device == "cpu"):
        raise UserError("--cuda-graphs needs --backend torchscript --device cuda")
    if backend == "onnx":
        from runtime.backends.ort import OnnxBackend
        return OnnxBackend(path, device, threads, cache_dir=cache_dir, source_sha256=sha256)
    from runtime.backends.torchscript import TorchScriptBackend
    return TorchScriptBackend(path, device, threads, cuda_graphs)
