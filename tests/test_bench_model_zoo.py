"""bench/model_zoo.py at its smallest: the tiny segmenter and ViT exported once each, and a model that cannot be
built, whose row is its one-line error."""
import json
import os
import subprocess
import sys

from conftest import REPO

BENCH = os.path.join(REPO, "bench", "model_zoo.py")


def test_the_table_has_a_row_per_model_with_its_points_and_verification(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "tests", "fixtures"))
    proc = subprocess.run([sys.executable, BENCH, "--models", "tiny_models:segmenter,tiny_models:vit,nosuch:model",
                           "--exports", "1", "--out", str(tmp_path)],
                          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = proc.stdout.splitlines()
    assert rows[0].startswith("| model | input | points (1 tensor) | cuts of 2 / 3 tensors |") and len(rows) == 5
    segmenter, vit, missing = rows[2:]
    assert segmenter.startswith("| tiny_models:segmenter | 3x32x32 | 7 | ") and "(failed)" not in segmenter
    assert segmenter.endswith("| same as split 0 |"), "the one export round-tripped to split 0's predictions"
    assert vit.startswith("| tiny_models:vit | 3x32x32 | ") and "`encoder.layers.encoder_layer_" in vit
    assert missing.startswith("| nosuch:model |") and "cannot import 'nosuch'" in missing
    data = json.loads((tmp_path / "model_zoo.json").read_text())
    exports = data["rows"][0]["exports"]
    assert len(exports) == 1 and exports[0]["passed"] and exports[0]["max_rel_diff"]["onnx"] < 1e-4
    assert "[3/3] nosuch:model" in proc.stderr
