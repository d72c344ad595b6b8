"""The TorchScript backend (needs torch; imported only when chosen).

On the CPU a loaded module is made ready for inference at load, and its first call settles it
(bench/edge_backends.py and docs/BENCHMARKS.md, "TorchScript and onnxruntime on the edge", have the figures):

* on torch 1.x through ``torch.jit.optimize_for_inference`` (frozen, batch norm folded into the convolutions, and
  MKLDNN's convolutions on prepacked weights): torch 1.10's ResNet-50 head at split 20 went from 28 to 19 ms on 2
  cores (onnxruntime 1.10: 25); on torch 2 and later only frozen (``torch.jit.freeze``), since there MKLDNN's
  kernels gained nothing at split 20 and made a one-convolution head 2-3x slower (their layout conversions);
  ``EDGESPLIT_TORCHSCRIPT_OPTIMIZE=frozen`` or ``=optimize_for_inference`` chooses;
* the TensorExpr fuser off on the CPU (torch 2.x's default; torch 1.10 has it on): it compiled fused kernels for
  each new input shape, about 1 s a shape for a ResNet-50 head (2 on a busy CPU), paid by the second request of
  every new batch size;
* the profiling executor's first runs (it profiles, then optimises the graph for what it saw) happen inside the
  first call, a warm-up request, and never in a measured one;
* OpenMP's waiting threads spin for a bounded time before they sleep (``GOMP_SPINCOUNT=2000``, about 20 us, set
  while torch is first imported; not where ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` is set, and libgomp's own
  default with ``EDGESPLIT_ORT_SPIN=1``).  torch splits each operator statically between its threads and ends it at
  a barrier, where libgomp by default spins for 300000 rounds (3 ms here) before sleeping: with the cores busy the
  spinning threads took the CPU from the very thread they waited for: the head at split 20 beside two busy loops
  took 97 ms with a p99 of 1.5 s (53% of its CPU samples in libgomp's spin loop), bounded 43 ms with a p99 of 85
  (onnxruntime 1.10: 41 and 101).

``EDGESPLIT_TORCHSCRIPT_OPTIMIZE=0`` loads a module the way earlier versions did (none of the above; for comparison,
or a model these passes get wrong).  On CUDA the module runs as loaded (with the settling first call).
Python 3.6 syntax, torch 1.10 API (JetPack 4.6) as well as torch 2.x.
"""
import logging
import os
import sys
import threading
import warnings

import numpy as np

from runtime.backends.ort import spin_wait
from runtime.errors import UserError

OPTIMIZE_ENV = "EDGESPLIT_TORCHSCRIPT_OPTIMIZE"


WAYS = ("frozen", "optimize_for_inference")


def optimize_enabled():
    """Whether TorchScript modules are prepared for inference at load: yes unless ``EDGESPLIT_TORCHSCRIPT_OPTIMIZE=0``."""
    return os.environ.get(OPTIMIZE_ENV, "1") != "0"


def way_for(torch):
    """How a module is prepared on the CPU: ``EDGESPLIT_TORCHSCRIPT_OPTIMIZE=frozen`` or ``=optimize_for_inference``
    where set, else optimize_for_inference on torch 1.x and frozen on torch 2 and later (the faster on each, measured;
    one rule, not a timing at load, so that every process on a machine computes the same bits)."""
    chosen = os.environ.get(OPTIMIZE_ENV, "")
    if chosen in WAYS:
        return chosen
    return "optimize_for_inference" if torch.__version__.split(".")[0] in ("0", "1") else "frozen"


# libgomp's spin before a waiting thread sleeps, in rounds of its spin loop (~10 ns each on this project's test VM,
# so ~20 us): long enough to bridge the gap between two operators, short enough not to take a busy core for long
SPIN_COUNT = "2000"


def _import_torch():
    """torch, imported with OpenMP's spin-wait bounded (``GOMP_SPINCOUNT``), unless the user chose a wait policy or a
    spin count, or spinning as libgomp does by default (``EDGESPLIT_ORT_SPIN=1``).

    libgomp reads its environment once, when torch loads it, so the variable is set for the import only (child
    processes, such as serve-cloud's on-demand export, keep the environment they were given); where torch was
    imported before, its setting stands."""
    bound = "torch" not in sys.modules and optimize_enabled() and not spin_wait() and \
        "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ
    if bound:
        os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    try:
        import torch
    except ImportError:
        raise UserError("--backend torchscript needs torch, which is not installed here; "
                        "use --backend onnx (numpy + onnxruntime only)")
    finally:
        if bound:
            del os.environ["GOMP_SPINCOUNT"]
    return torch


def _for_inference(torch, module, path):
    """``module`` prepared for inference on the CPU (``way_for``), and how; or as it was, and None, where torch
    cannot (a warning says why)."""
    if hasattr(torch._C, "_jit_override_can_fuse_on_cpu"):
        torch._C._jit_override_can_fuse_on_cpu(False)  # process-wide; torch 2.x's default
    how = way_for(torch)
    if how == "optimize_for_inference" and not hasattr(torch.jit, "optimize_for_inference"):
        how = "frozen"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch 2.x: optimize_for_inference is deprecated (still there)
            if how == "frozen":
                return torch.jit.freeze(module), how
            return torch.jit.optimize_for_inference(module), how  # freezes a copy of its own, then rewrites it
    except Exception as exc:  # prototype passes: a module they cannot handle runs as loaded
        logging.getLogger("edgesplit").warning("torch could not prepare %s for inference (%s: %s); running it as "
                                               "loaded", path, how, str(exc).splitlines()[0][:200] if str(exc) else
                                               type(exc).__name__)
        return module, None


def _load(torch, path, device):
    """``torch.jit.load``; a file that calls torchvision's operators (a detector's NMS, after its tail) loads once
    torchvision has registered them, so it is imported and the load tried again where the first one failed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.jit.load(path, map_location=device).eval()
        except Exception as first:
            try:
                import torchvision  # noqa: F401  (registers torchvision::nms and the other operators)
            except ImportError:
                raise first
            return torch.jit.load(path, map_location=device).eval()


class TorchScriptBackend(object):
    name = "torchscript"

    def __init__(self, path, device="auto", threads=0, cuda_graphs=False):
        torch = _import_torch()
        self.torch = torch
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda but torch sees no CUDA device; use --device cpu")
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        try:
            self.module = _load(torch, path, self.device)
        except Exception as exc:
            raise UserError("torch cannot load {} ({}); re-export the bundle".format(
                path, (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]))
        self.optimised = None  # how the module was prepared for inference: None, "frozen", "optimize_for_inference"
        if self.device.type == "cpu" and optimize_enabled():
            self.module, self.optimised = _for_inference(torch, self.module, path)
        # the first call settles the profiling executor (see _settle); the old way had no such call
        self.settled = not optimize_enabled()
        self.settle_lock = threading.Lock()
        self.provider = str(self.device) if self.device.type == "cpu" else "cuda:{}".format(
            torch.cuda.current_device())
        self.graphs = None
        if cuda_graphs:
            if self.device.type != "cuda":
                raise UserError("--cuda-graphs needs --device cuda")
            self.graphs = _GraphCache(torch, self.module, self.device)
            self.provider += "+graphs"

    def run_many(self, arrays):
        """``run`` of the arrays concatenated along the batch axis (the dynamic batcher's call): with
        CUDA graphs, each array is copied straight into the graph's page-locked input."""
        if self.graphs is not None:
            return self.graphs.run(arrays, self._eager)
        return self._eager(np.concatenate(arrays, axis=0))

    def run(self, x):
        """The part's output for ``x``: one array, or (a cut of several tensors) a tuple of arrays; the same form
        back.  CUDA graphs are captured for one input tensor only."""
        if self.graphs is not None and not isinstance(x, tuple):
            return self.graphs.run(x, self._eager)
        return self._eager(x)

    def _inputs(self, x):
        torch = self.torch
        return [torch.from_numpy(a).to(self.device) for a in (x if isinstance(x, tuple) else (x,))]

    def _settle(self, x):
        """Run the module as often as the profiling executor needs to settle: it profiles its first
        ``num_profiled_runs`` calls and optimises the graph on the next one (each slower than the calls after), so
        they happen here, inside the first call (a warm-up in run-edge, profile and the server alike) and never in
        a measured one.  Later input shapes need no more: with the CPU fuser off nothing is compiled per shape."""
        torch = self.torch
        with self.settle_lock:
            if self.settled:
                return
            profiled = torch._C._jit_get_num_profiled_runs() if hasattr(torch._C, "_jit_get_num_profiled_runs") else 1
            with torch.no_grad():
                inputs = self._inputs(x)
                for _ in range(max(1, int(profiled)) + 1):
                    self.module(*inputs)
            self.settled = True

    def _eager(self, x):
        torch = self.torch
        if not self.settled:
            self._settle(x)
        with torch.no_grad():
            y = self.module(*self._inputs(x))
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            if isinstance(y, (tuple, list)):
                return tuple(t.cpu().numpy() for t in y)
            return y.cpu().numpy()


class _GraphCache(object):
    """CUDA graphs of the module, one per input shape: a batch-1 tail is launch-bound, and
    replaying a captured graph launches its ~150 kernels at once.

    A shape is captured on its WARMUP-th call (TorchScript's profiling executor settles
    its graph in the first calls); until then, and for a shape whose capture failed, the
    module runs as usual.  Replays share one static input and output per shape, and no
    other work of this module may run while one is captured, so every call holds a lock;
    the server calls a tail from several connection threads (the GPU would run their
    kernels one after another anyway).
    """

    WARMUP = 3
    MAX_SHAPES = 64

    def __init__(self, torch, module, device):
        import threading
        self.torch = torch
        self.module = module
        self.device = device
        self.lock = threading.Lock()
        self.seen = {}
        self.graphs = {}  # shape -> (graph, static input, static output), or None if capture failed

    def run(self, x, eager):
        """The module's output for ``x`` (an array, or a list of arrays to concatenate along the
        batch axis): a replay of the graph for its shape, or ``eager(array)``."""
        parts = x if isinstance(x, list) else [x]
        key = (sum(a.shape[0] for a in parts),) + tuple(parts[0].shape[1:])
        with self.lock:
            entry = self.graphs.get(key)
            if key not in self.graphs:
                self.seen[key] = self.seen.get(key, 0) + 1
                if self.seen[key] >= self.WARMUP and len(self.graphs) < self.MAX_SHAPES:
                    entry = self.graphs[key] = self._capture(np.concatenate(parts, axis=0) if len(parts) > 1
                                                             else parts[0])
            if entry is None:
                return eager(np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0])
            graph, static_in, static_out, host_in, host_out = entry
            staged, row = host_in.numpy(), 0
            for a in parts:  # into page-locked memory: the copy to the GPU runs at full speed
                staged[row:row + a.shape[0]] = a
                row += a.shape[0]
            static_in.copy_(host_in, non_blocking=True)
            graph.replay()
            host_out.copy_(static_out, non_blocking=True)
            self.torch.cuda.current_stream(self.device).synchronize()
            return host_out.numpy().copy()

    def _capture(self, x):
        torch = self.torch
        try:
            with torch.no_grad():
                static_in = torch.from_numpy(x).to(self.device)
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):
                    for _ in range(3):
                        self.module(static_in)
                torch.cuda.current_stream(self.device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    static_out = self.module(static_in)
            torch.cuda.synchronize(self.device)
            host_in = torch.empty(static_in.shape, dtype=static_in.dtype).pin_memory()
            host_out = torch.empty(static_out.shape, dtype=static_out.dtype).pin_memory()
            return graph, static_in, static_out, host_in, host_out
        except Exception as exc:  # some modules cannot be captured: run them as usual
            import logging
            logging.getLogger("edgesplit").warning("CUDA graph capture failed for input %s (%s); running without",
                                                   list(x.shape), str(exc).splitlines()[0][:200])
            return None
