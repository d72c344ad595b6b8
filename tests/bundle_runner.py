"""Runs a written bundle's head then tail straight from its files, for the tests."""
import os

import onnxruntime as ort
import torch

from runtime.bundle.manifest import load_manifest


def run_bundle(directory, x, fmt):
    """Head then tail of the bundle in ``directory`` on ``x`` (numpy), with onnxruntime or TorchScript."""
    manifest = load_manifest(directory)
    y = x
    for part in ("head", "tail"):
        if manifest.part(part) is None:
            continue
        path = manifest.file_path(part, fmt)
        if fmt == "onnx":
            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            y = session.run(None, {session.get_inputs()[0].name: y})[0]
        else:
            with torch.no_grad():
                y = torch.jit.load(path).eval()(torch.from_numpy(y)).numpy()
    return y


def bundle_files(directory):
    return sorted(f for f in os.listdir(directory))
