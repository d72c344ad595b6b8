"""The TorchScript backend (needs torch; imported only when chosen)."""
import warnings

import numpy as np

from runtime.errors import UserError


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

    def run_many(self, arrays):
        """``run`` of the arrays concatenated along the batch axis (the dynamic batcher's call): with
        CUDA graphs, each array is copied straight into the graph's page-locked input."""
        if self.graphs is not None:
            return self.graphs.run(arrays, self._eager)
        return self._eager(np.concatenate(arrays, axis=0))

    def run(self, x):
        if self.graphs is not None:
            return self.graphs.run(x, self._eager)
        return self._eager(x)

    def _eager(self, x):
        torch = self.torch
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
