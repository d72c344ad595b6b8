"""The onnxruntime backend: TensorRT > CUDA > CPU, whichever loads.

On the CPU provider, onnxruntime's full graph optimisation rewrites convolutions
into a blocked layout with copies of their weights, and keeps the originals: a
90 MB head costs about 250 MB.  So the first load of a file whose sha256 is known
(a bundle's head or tail) also saves the optimised graph into ``<bundle>/.ort-opt/``
(named by the source's sha256, the onnxruntime version and this CPU, since the
blocked layout depends on the CPU's vector width; with its own sha256 beside it),
and later loads read that file with optimisation off: the same speed at about
60% of the memory, and a faster start (bench/speed.py, "lean").  Like TensorRT's
engine cache, nothing is shared between machines.
"""
import hashlib
import os
import platform

from runtime.bundle.manifest import sha256_file
from runtime.errors import UserError

SPIN_ENV = "EDGESPLIT_ORT_SPIN"


def spin_wait():
    """Whether onnxruntime's intra-op threads may spin-wait: off unless ``EDGESPLIT_ORT_SPIN=1``.

    Measured (docs/BENCHMARKS.md, "onnxruntime's spinning"): with both cores busy the edge's head took
    1.4x as long with spinning on, and a small tail cost the server 30-40% more CPU per request; on a
    quiet machine the difference was within the run-to-run noise."""
    return os.environ.get(SPIN_ENV, "0") == "1"


def _providers(ort, device, cache_dir):
    available = ort.get_available_providers()
    wanted = []
    if device in ("auto", "cuda"):
        if "TensorrtExecutionProvider" in available:
            wanted.append(("TensorrtExecutionProvider", {
                # engines take minutes to build on a Jetson: keep them beside the bundle
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": os.path.join(cache_dir, ".trt-cache"),
            }))
        if "CUDAExecutionProvider" in available:
            wanted.append(("CUDAExecutionProvider", {}))
        if device == "cuda" and not wanted:
            raise UserError("--device cuda but this onnxruntime has no CUDA or TensorRT provider (it has {}); "
                            "install onnxruntime-gpu, or use --device cpu".format(", ".join(available)))
    wanted.append(("CPUExecutionProvider", {}))
    return wanted


def _cpu_signature():
    """This CPU's model and feature flags (the optimised layout depends on them)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [l for l in f if l.startswith(("model name", "flags", "Features", "CPU part"))]
    except OSError:
        lines = []
    return hashlib.sha256("".join(sorted(set(lines))).encode("utf-8")).hexdigest()[:12]


def _optimised_path(path, source_sha256, ort, cache_dir):
    key = hashlib.sha256("|".join([source_sha256, ort.__version__, platform.machine(), _cpu_signature()]).encode(
        "utf-8")).hexdigest()[:16]
    base = os.path.splitext(os.path.basename(path))[0]
    return os.path.join(cache_dir, ".ort-opt", "{}.{}.onnx".format(base, key))


def session_options(threads=0):
    """onnxruntime's session options as this project sets them, for every session it makes."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    # onnxruntime's intra-op threads spin-wait for work after each op and each run: on a busy CPU that
    # takes cores from the other work (docs/BENCHMARKS.md: 1.4x the head's time under load)
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin_wait() else "0")
    return options


def cpu_session(path, threads=0):
    """A plain onnxruntime session on the CPU (the exporter's verification and segment chains use it)."""
    import onnxruntime as ort
    return ort.InferenceSession(path, session_options(threads), providers=["CPUExecutionProvider"])


class OnnxBackend(object):
    name = "onnx"

    def __init__(self, path, device="auto", threads=0, cache_dir=".", source_sha256=None):
        import onnxruntime as ort
        options = session_options(threads)
        providers = _providers(ort, device, cache_dir)
        if providers[0][0] == "TensorrtExecutionProvider":
            try:
                os.makedirs(providers[0][1]["trt_engine_cache_path"], exist_ok=True)
            except OSError:
                providers = providers[1:]
        self.optimised = None  # "loaded" or "saved" when the CPU optimised-graph cache was used
        cpu_only = len(providers) == 1
        try:
            if cpu_only and source_sha256:
                self.session = self._load_optimised(ort, path, options, source_sha256, cache_dir)
            else:
                self.session = ort.InferenceSession(path, options, providers=[p[0] for p in providers],
                                                    provider_options=[p[1] for p in providers])
        except Exception as exc:  # onnxruntime raises its own types for bad files
            raise UserError("onnxruntime cannot load {} ({}); re-export the bundle".format(
                path, str(exc).splitlines()[0][:200]))
        self.provider = self.session.get_providers()[0]
        if device == "cuda" and self.provider == "CPUExecutionProvider":
            raise UserError("--device cuda but the CUDA provider failed to load for {}; check CUDA/cuDNN "
                            "libraries, or use --device cpu".format(path))
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.input_name = self.input_names[0]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def _load_optimised(self, ort, path, options, source_sha256, cache_dir):
        """A CPU session from the cached optimised graph, or from ``path`` while saving that graph."""
        cached = _optimised_path(path, source_sha256, ort, cache_dir)
        try:
            with open(cached + ".sha256") as f:
                good = f.read().strip() == sha256_file(cached)
        except OSError:
            good = False
        if good:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            try:
                session = ort.InferenceSession(cached, options, providers=["CPUExecutionProvider"])
                self.optimised = "loaded"
                return session
            except Exception:  # unreadable after all: fall through and make it again
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        tmp = "{}.tmp-{}".format(cached, os.getpid())
        try:
            os.makedirs(os.path.dirname(cached), exist_ok=True)
            options.optimized_model_filepath = tmp
        except OSError:  # a read-only bundle: no cache, nothing lost
            tmp = None
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        if tmp and os.path.isfile(tmp):
            try:
                with open(tmp + ".sha256", "w") as f:
                    f.write(sha256_file(tmp) + "\n")
                os.replace(tmp + ".sha256", cached + ".sha256")
                os.replace(tmp, cached)
                self.optimised = "saved"
            except OSError:
                for leftover in (tmp, tmp + ".sha256"):
                    if os.path.exists(leftover):
                        os.remove(leftover)
        return session

    def run(self, x):
        """The part's output for ``x``: one array, or (a cut of several tensors) a tuple of arrays in the order of
        the file's inputs; the same form back for its outputs."""
        # session.run returns host arrays, so it has waited for the device: timers around it are honest
        if isinstance(x, tuple):
            feeds = dict(zip(self.input_names, x))
        else:
            feeds = {self.input_name: x}
        ys = self.session.run(self.output_names, feeds)
        return ys[0] if len(ys) == 1 else tuple(ys)
