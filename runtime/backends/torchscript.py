"""The TorchScript backend (needs torch; imported only when chosen)."""
import warnings

from ..errors import UserError


class TorchScriptBackend(object):
    name = "torchscript"

    def __init__(self, path, device="auto", threads=0):
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

    def run(self, x):
        torch = self.torch
        with torch.no_grad():
            y = self.module(torch.from_numpy(x).to(self.device))
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            return y.cpu().numpy()
