"""The TorchScript backend (needs torch; imported only when chosen)."""
import warnings

import numpy as np

from ..errors import UserError


class TorchScriptBackend(object):
    name = "torchscript"

    def __init__(self, path, device="auto", threads=0, cuda_graphs=False):
        try:
            import torch
        except ImportError:
            raise UserError("--backend torchscript needs torch, which is not installed here; "
                            "use --backend onnx (numpy + onnxruntime only)")
        self.torch = torch
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda but torch sees no CUDA device; use --device cpu")
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.module = torch.jit.load(path, map_location=self.device).eval()
        except Exception as exc:
            raise UserError("torch cannot load {} ({}); re-export the bundle".format(
                path, str(exc).splitlines()[0][:200]))
        self.provider = str(self.device) if self.device.type == "cpu" else "cuda:{}".format(
            torch.cuda.current_device())
        self.graphs = None
        if cuda_graphs:
            if self.device.type != "cuda":
                raise UserError("--cuda-graphs needs --device cuda")
            self.graphs = _GraphCache(torch, self.module, self.device)
            self.provider += "+graphs"

    def run(self, x):
        torch = self.torch
        if self.graphs is not None:
            y = self.graphs.run(x)
            if y is not None:
                return y
        with torch.no_grad():
            y = self.module(torch.from_numpy(x).to(self.device))
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            return y.cpu().numpy()


class _GraphCache(object):
    """CUDA graphs of the module, one per input shape: a batch-1 tail is launch-bound, and
    replaying a captured graph launches its ~150 kernels at once.

    A shape is captured on its WARMUP-th call (TorchScript's profiling executor settles
    its graph in the first calls); until then, and for a shape whose capture failed, the
    caller runs the module as usual (``run`` returns None).  Replays share one static input
    and output per shape, so they are serialised by a lock; the server calls a tail from
    several connection threads.
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

    def run(self, x):
        key = tuple(x.shape)
        with self.lock:
            if key not in self.graphs:
                self.seen[key] = self.seen.get(key, 0) + 1
                if self.seen[key] < self.WARMUP or len(self.graphs) >= self.MAX_SHAPES:
                    return None
                self.graphs[key] = self._capture(x)
            entry = self.graphs[key]
            if entry is None:
                return None
            graph, static_in, static_out, host_in, host_out = entry
            np.copyto(host_in.numpy(), x)  # into page-locked memory: the copy to the GPU runs at full speed
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
