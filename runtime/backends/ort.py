"""The onnxruntime backend: TensorRT > CUDA > CPU, whichever loads."""
import os

from ..errors import UserError


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


class OnnxBackend(object):
    name = "onnx"

    def __init__(self, path, device="auto", threads=0, cache_dir="."):
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        providers = _providers(ort, device, cache_dir)
        if providers[0][0] == "TensorrtExecutionProvider":
            try:
                os.makedirs(providers[0][1]["trt_engine_cache_path"], exist_ok=True)
            except OSError:
                providers = providers[1:]
        try:
            self.session = ort.InferenceSession(path, options, providers=[p[0] for p in providers],
                                                provider_options=[p[1] for p in providers])
        except Exception as exc:  # onnxruntime raises its own types for bad files
            raise UserError("onnxruntime cannot load {} ({}); re-export the bundle".format(
                path, str(exc).splitlines()[0][:200]))
        self.provider = self.session.get_providers()[0]
        if device == "cuda" and self.provider == "CPUExecutionProvider":
            raise UserError("--device cuda but the CUDA provider failed to load for {}; check CUDA/cuDNN "
                            "libraries, or use --device cpu".format(path))
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [self.session.get_outputs()[0].name]

    def run(self, x):
        # session.run returns host arrays, so it has waited for the device: timers around it are honest
        return self.session.run(self.output_names, {self.input_name: x})[0]
