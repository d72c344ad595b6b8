"""The python-backend ``model.py`` of a Triton repository's active-bundle entry (``<model id>-active``).

``push --triton-repo --activate`` writes this entry; what it says is in its
config's ``parameters`` (``bundle_id``, ``entry``, ``version``, ``split``), which
edges read with the model-config API.  Asked to infer, it answers the active
bundle id, so a client without the config API can ask too.  It runs nothing else.
"""
import json

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by Triton's python backend stub


class TritonPythonModel(object):
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.bundle_id = config["parameters"]["bundle_id"]["string_value"]

    def execute(self, requests):
        answer = np.array([self.bundle_id.encode()], dtype=np.object_)
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("BUNDLE_ID", answer)]) for _ in requests]
