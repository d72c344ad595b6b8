"""The python-backend model that ``export-triton --platform python`` writes as ``model.py``.

Triton's python backend stub imports this file and calls ``initialize`` once per
instance, ``execute`` with each batch of requests and ``finalize`` at unload.  The
tail runs with this project's own backends (onnxruntime or TorchScript, CPU or CUDA),
from the bundle's files copied beside this one, each checked against the manifest's
sha256 at ``initialize``.  The config's ``parameters`` say where this project's
``runtime/`` is (``runtime_path``), which backend and device to use (``auto``: CUDA
for a ``KIND_GPU`` instance, else the CPU), and which bundle this is
(``bundle_id``, ``manifest_sha256``).

Triton's dynamic batcher may hand several requests to one ``execute``: their
activations are run as one batch, and each response gets its own rows back.

An entry exported with ``--input-dtype float16`` says so in its ``parameters``
(``input_dtype``): Triton hands float16 arrays, cast here to the tail's dtype (the
manifest's boundary dtype) before the tail runs.
"""
import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by Triton's python backend stub


class TritonPythonModel(object):
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        if params.get("runtime_path") and params["runtime_path"] not in sys.path:
            sys.path.insert(0, params["runtime_path"])
        from runtime.backends import load_part
        from runtime.bundle.manifest import load_manifest
        directory = os.path.join(args["model_repository"], args["model_version"])
        manifest = load_manifest(directory)
        # push --triton-repo keeps two versions served, each named by its own parameter
        expected = params.get("bundle_id.v{}".format(args["model_version"]), params.get("bundle_id"))
        if manifest.bundle_id != expected:
            raise pb_utils.TritonModelException("{} holds bundle {}, but the config names {}".format(
                directory, manifest.bundle_id, expected))
        manifest.verify_files(parts=("tail",))
        device = params.get("device", "auto")
        if device == "auto":  # the instance group's kind decides
            device = "cuda" if args.get("model_instance_kind") == "GPU" else "cpu"
        self.tail = load_part(manifest, "tail", params.get("backend", "onnx"), device)
        self.input_name = manifest["boundary"]["name"]
        # --input-dtype float16: cast what Triton hands to the tail's own dtype (None: it takes it as it comes)
        self.cast_to = None
        if params.get("input_dtype", manifest["boundary"]["dtype"]) != manifest["boundary"]["dtype"]:
            self.cast_to = np.dtype(manifest["boundary"]["dtype"])
        self.output_name = manifest["output"]["name"]

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        if self.cast_to is not None:
            arrays = [x.astype(self.cast_to) for x in arrays]
        out = self.tail.run(np.ascontiguousarray(np.concatenate(arrays)) if len(arrays) > 1 else arrays[0])
        responses, start = [], 0
        for x in arrays:
            rows = out[start:start + len(x)]
            start += len(x)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, rows)]))
        return responses

    def finalize(self):
        self.tail = None
