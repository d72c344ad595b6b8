"""The TorchScript edge on JetPack 4.6's torch 1.10: real ``run-edge --backend torchscript`` processes under Python
3.6 + torch 1.10.0, from this checkout with no install, against ``serve-cloud`` on the cloud's Python.

Opt in with ``make test-torch110``: it makes ``.venv-jp46-torch`` (the JetPack 4.6 packages and torch 1.10.0,
about 880 MB) and runs this file and tests/test_jetpack46.py with ``EDGESPLIT_JP46_ENV`` pointing at it.  Under the
default ``.venv-jp46`` (no torch) these tests skip, saying so; the backend's own check runs on the cloud's torch
whatever the environment.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from cloud_server import ServerProcess
from conftest import REPO, TINY_ID, assert_seed_report_first, tiny_bundle

ENV = os.path.join(REPO, os.environ.get("EDGESPLIT_JP46_ENV", ".venv-jp46"))
PY36 = os.path.join(ENV, "bin", "python")


def edge_env():
    """The edge's environment: nothing of the cloud's packages or the tests' fixtures on its path."""
    env = dict((k, v) for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _torch_unavailable():
    """Why the JetPack 4.6 environment cannot run TorchScript heads, or None where it imports torch."""
    where = os.path.relpath(ENV, REPO)
    said = os.path.join(ENV, "UNAVAILABLE")
    if os.path.exists(said):
        with open(said) as f:
            return "the JetPack 4.6 environment {} could not be made ({})".format(where, f.read().strip())
    if not os.path.exists(PY36):
        return "no JetPack 4.6 environment at {} (make test-torch110 makes one with torch 1.10)".format(where)
    proc = subprocess.run([PY36, "-c", "import torch"], env=edge_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True)
    if proc.returncode != 0:
        return "{} has no torch (make test-torch110 runs this tier on torch 1.10.0)".format(where)
    return None


REASON = _torch_unavailable()
needs_torch110 = pytest.mark.skipif(REASON is not None, reason=REASON or "")

# run in either interpreter: the backend prepared for inference against the module as loaded, at several batch
# sizes and from several threads at once (the server's way of calling a tail)
PARITY = r"""
import json, os, sys, threading
import numpy as np
from runtime.backends import load_file
path, shape = sys.argv[1], json.loads(sys.argv[2])
ready = load_file(path, "torchscript", "cpu")  # first: torch is imported here, as run-edge imports it
ways = {}
for way in ("0", "frozen", "optimize_for_inference"):
    os.environ["EDGESPLIT_TORCHSCRIPT_OPTIMIZE"] = way
    ways[way] = load_file(path, "torchscript", "cpu")
del os.environ["EDGESPLIT_TORCHSCRIPT_OPTIMIZE"]
import torch
rng = np.random.RandomState(0)
xs = [rng.standard_normal([b] + shape).astype(np.float32) for b in (1, 2, 3, 5, 1, 4)]
worst = 0.0
for x in xs:
    a = ways["0"].run(x)
    for way in ("frozen", "optimize_for_inference"):
        b = ways[way].run(x)
        worst = max(worst, float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30)))
alone = [ready.run(x) for x in xs]
together = [None] * len(xs)
def one(i):
    together[i] = ready.run(xs[i])
threads = [threading.Thread(target=one, args=(i,)) for i in range(len(xs))]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"torch": torch.__version__, "default": ready.optimised,
                  "ways": dict((k, v.optimised) for k, v in ways.items()), "max_rel_diff": worst,
                  "threads_agree": all(np.array_equal(a, b) for a, b in zip(alone, together)),
                  "same_bits_as_its_way": all(np.array_equal(a, ways[ready.optimised].run(x))
                                              for a, x in zip(alone, xs)),
                  "cpu_fuser": torch._C._jit_can_fuse_on_cpu(), "spin_env_left": "GOMP_SPINCOUNT" in os.environ}))
"""


@pytest.mark.parametrize("interpreter", ["torch 1.10", "cloud"])
def test_the_module_prepared_for_inference_gives_the_loaded_modules_outputs(interpreter, tiny_bundles):
    """Both ways of preparing a module (frozen; optimize_for_inference, with MKLDNN's convolutions), on the tiny
    model's head and tail: the loaded module's outputs at every batch size; each torch's own way, the same bits from
    several threads at once as alone; the CPU fuser off, and no spin setting left in the environment."""
    if interpreter == "torch 1.10" and REASON is not None:
        pytest.skip(REASON)
    python = PY36 if interpreter == "torch 1.10" else sys.executable
    for part, shape in (("head", [3, 16, 16]), ("tail", [8, 16, 16])):
        path = str(tiny_bundle(tiny_bundles, 3) / "{}.pt".format(part))
        proc = subprocess.run([python, "-c", PARITY, path, json.dumps(shape)], cwd=REPO,
                              env=dict(edge_env(), PYTHONPATH=REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        assert r["ways"] == {"0": None, "frozen": "frozen", "optimize_for_inference": "optimize_for_inference"}, r
        assert r["default"] == ("optimize_for_inference" if interpreter == "torch 1.10" else "frozen"), r
        assert r["max_rel_diff"] < 1e-5 and r["threads_agree"] and r["same_bits_as_its_way"], r
        assert r["cpu_fuser"] is False and r["spin_env_left"] is False, r
        assert r["torch"].startswith("1.10.") == (interpreter == "torch 1.10"), r


@pytest.fixture(scope="module")
def server(seed_bundles):
    srv = ServerProcess(seed_bundles[0])
    yield srv
    assert srv.stop() == 0, srv.log_text()


@pytest.fixture(scope="module")
def tiny_server(tiny_bundles):
    srv = ServerProcess(tiny_bundles)
    yield srv
    assert srv.stop() == 0, srv.log_text()


def run_edge36(*args):
    return subprocess.run([PY36, os.path.join(REPO, "cli.py"), "run-edge"] + [str(a) for a in args], cwd=REPO,
                          env=edge_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                          timeout=600)


@needs_torch110
@pytest.mark.parametrize("split", [3, 20])
def test_the_torchscript_edge_on_torch_110_gives_the_unsplit_models_predictions(split, server, labelled_npz,
                                                                               tmp_path):
    """The seed's ResNet-50 from an empty cache: the TorchScript head fetched, verified and run by torch 1.10; the
    seed's four lines first, every prediction the unsplit model's."""
    data, labels = labelled_npz[0], labelled_npz[1][:24]
    report = tmp_path / "r.json"
    proc = run_edge36("--cloud", server.address, "--cache", tmp_path / "cache", "--split", split, "--backend",
                      "torchscript", "--dataset", "npz:" + data, "--limit", 24, "--batch-size", 4 if split % 2 else 1,
                      "--report", report)
    assert proc.returncode == 0, proc.stderr
    assert_seed_report_first(proc.stdout)
    r = json.loads(report.read_text())
    assert r["predictions"] == labels.tolist() and r["labels"] == labels.tolist()
    assert r["backend"] == "torchscript" and r["provider"] == "cpu" and r["split"] == split
    assert [f["split"] for f in r["fetches"]] == [split]
    assert os.listdir(str(tmp_path / "cache" / "resnet50-s{}".format(split))).count("head.pt") == 1


@needs_torch110
def test_the_torchscript_edge_on_torch_110_pipelines(tiny_server, tiny_bundles, tiny_labelled_npz, tmp_path):
    """--inflight 4 on the tiny model: the receiver thread beside torch 1.10's compute, every prediction right."""
    data, labels = tiny_labelled_npz
    report = tmp_path / "r.json"
    proc = run_edge36("--cloud", tiny_server.address, "--artifacts", tiny_bundles, "--model", TINY_ID, "--split", 4,
                      "--backend", "torchscript", "--inflight", 4, "--dataset", "npz:" + data, "--limit", 120,
                      "--report", report)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(report.read_text())
    assert r["predictions"] == labels[:120].tolist() and r["inflight"] == 4 and r["backend"] == "torchscript"
    assert np.isfinite(r["edge_ms"]["p99"])
