"""What a new user's mistakes get at start (issue 32, items 4 and 6): one line that says what is wrong and what to
do, a non-zero exit, before anything listens or any expensive work, and nothing left behind.

4. serve-cloud checks at start what used to fail at an edge later: the weights of its on-demand exports (a file
   that is not there, another model's state dict), flags it would ignore (--weights or --random-init without
   --model, the two together), and every bundle of its store against its manifest (a corrupt tail.onnx).
6. A file that is not what a command takes is described in this tool's words, never with numpy's or torch's
   advice to load it unsafely (allow_pickle, weights_only=False): --dataset npz:FILE on run-edge, sweep and demo,
   --weights on export, layers and serve-cloud.

Real cli.py subprocesses and real serve-cloud servers, on the tiny 10-class model (tests/fixtures/tiny_models.py);
resnet50 only where its default weights file is the point.  "Before listening" is shown by holding the port
serve-cloud is given: a check that came after the bind would say "cannot listen" instead.  "Before any expensive
work" on the edge: no connection reaches the real server (its summary counts none) and the cache is never made.
"""
import os
import shutil
import socket

import numpy as np
import pytest
import torch
from cloud_server import ServerProcess
from conftest import TINY, TINY_ID, TINY_SPLITS, run_cli, tiny_bundle

UNSAFE_ADVICE = ("allow_pickle", "pickle.load", "weights_only", "Re-running", "trust")
STATE_DICT = "is not a PyTorch state dict of {}".format(TINY_ID)
NOT_NPZ = "is not an .npz archive of arrays x and y"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """What the user had: a JSON file, a garbage .pth, the tiny model's state dict and another model's."""
    from tiny_models import build, classifier
    d = tmp_path_factory.mktemp("user-files")
    (d / "labels.json").write_text('{"x": [[1, 2]], "y": [0]}\n')
    (d / "garbage.pth").write_bytes(b"this is not a checkpoint at all\n")
    torch.save(classifier().state_dict(), str(d / "tiny.pth"))
    torch.save(build().state_dict(), str(d / "other-model.pth"))
    np.savez(str(d / "objects.npz"), x=np.zeros((2, 16, 16, 3), np.uint8), y=np.array([None, 1], dtype=object))
    return d


@pytest.fixture
def held_port():
    """A port something else already listens on: serve-cloud given it fails with "cannot listen" once it binds."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield s.getsockname()[1]


@pytest.fixture
def cwd(tmp_path):
    """An empty working directory for the command (no weights/ in it): it must stay empty."""
    path = tmp_path / "cwd"
    path.mkdir()
    return path


def one_line(proc, *fragments, alone=True):
    """The command failed with exit 1, its error one line holding ``fragments`` (``alone``: the only line on stderr,
    else its last), and nothing on stderr advises an unsafe load; the line."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and lines and lines[-1].startswith("error: "), proc.stderr
    assert len(lines) == 1 or not alone, proc.stderr
    assert "Traceback" not in proc.stderr and "listening" not in proc.stdout + proc.stderr
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])
    for advice in UNSAFE_ADVICE:
        assert advice not in proc.stderr, (advice, proc.stderr)
    return lines[-1]


def serve_cloud(port, store, cwd, *args):
    return run_cli("serve-cloud", "--port", port, "--artifacts", store, *args, cwd=str(cwd))


# ---------------------------------------------------------------- 4. serve-cloud at start

@pytest.mark.parametrize("weights,fragments", [
    ("missing.pth", ("missing.pth not found", "give --weights the path of a state dict of " + TINY_ID)),
    ("other-model.pth", (STATE_DICT, "missing head.1.weight", "unexpected body.bias", "another model")),
    ("garbage.pth", (STATE_DICT, "torch.save did not write it", "torch.save(model.state_dict(), PATH)")),
])
def test_serve_cloud_refuses_weights_that_do_not_fit_the_model_before_listening(weights, fragments, files, held_port,
                                                                                 cwd, tmp_path):
    store = tmp_path / "store"  # --model would make it, were the weights accepted
    path = files / weights
    line = one_line(serve_cloud(held_port, store, cwd, "--model", TINY, "--weights", path), *fragments)
    assert line.startswith("error: serve-cloud --model {}: its exports would fail with weights {}".format(TINY, path))
    assert not store.exists() and os.listdir(str(cwd)) == []


@pytest.mark.parametrize("args,fragments", [
    (("--weights", "w.pth"), ("--weights w.pth is for the splits serve-cloud exports on demand",
                              "add --model MODEL", "or drop --weights")),
    (("--random-init",), ("--random-init is for the splits serve-cloud exports on demand", "or drop --random-init")),
    (("--model", TINY, "--weights", "w.pth", "--random-init"),
     ("--weights w.pth and --random-init contradict each other", "drop --random-init", "or drop --weights")),
])
def test_serve_cloud_refuses_weights_flags_it_would_ignore(args, fragments, tiny_bundles, held_port, cwd):
    """w.pth does not exist: the flags are refused before the file is looked at (and before the exporter runs)."""
    one_line(serve_cloud(held_port, tiny_bundles, cwd, *args), *fragments)
    assert os.listdir(str(cwd)) == []


def test_serve_cloud_model_without_weights_names_the_default_file_it_lacks(held_port, cwd, tmp_path):
    """The seed's resnet50 exports with weights/resnet50-best.pth when no --weights is given: not there, not started."""
    store = tmp_path / "store"
    one_line(serve_cloud(held_port, store, cwd, "--model", "resnet50"),
             "serve-cloud --model resnet50 has no weights to export it with", "no weights/resnet50-best.pth here",
             "give --weights PATH", "or --random-init")
    assert not store.exists() and os.listdir(str(cwd)) == []


def test_serve_cloud_starts_with_weights_that_fit_and_names_them(files, tmp_path):
    srv = ServerProcess(tmp_path / "store", "--model", TINY, "--weights", files / "tiny.pth")
    assert srv.stop() == 0, srv.log_text()
    assert "(model id {}) are exported on demand, with weights {}".format(TINY_ID, files / "tiny.pth") \
        in srv.log_text()


def _tampered_store(tiny_bundles, root, split, name):
    """A copy of the tiny model's splits 2 and 3, with a few bytes of ``name`` of ``split`` overwritten in place."""
    root.mkdir()
    for k in (2, 3):
        shutil.copytree(str(tiny_bundle(tiny_bundles, k)), str(root / tiny_bundle(tiny_bundles, k).name))
    with open(str(root / tiny_bundle(tiny_bundles, split).name / name), "r+b") as f:
        f.seek(100)
        f.write(b"bitrot")
    return root


def _listing(root):
    return sorted(os.path.relpath(os.path.join(d, f), str(root)) for d, _, names in os.walk(str(root)) for f in names)


def test_serve_cloud_refuses_a_store_with_a_corrupt_tail_before_listening(tiny_bundles, held_port, cwd, tmp_path):
    store = _tampered_store(tiny_bundles, tmp_path / "store", 3, "tail.onnx")
    before = _listing(store)
    damaged = store / "{}-s3".format(TINY_ID)
    one_line(serve_cloud(held_port, store, cwd),
             "bundle {} is damaged: tail.onnx is corrupt: sha256".format(damaged), "but the manifest says",
             "re-export split 3 of {} into {} or remove the bundle".format(TINY_ID, store))
    assert _listing(store) == before and os.listdir(str(cwd)) == []  # no .ort-opt/, no temporary directory


def test_serve_cloud_names_every_damaged_bundle(tiny_bundles, held_port, cwd, tmp_path):
    store = _tampered_store(tiny_bundles, tmp_path / "store", 2, "head.pt")
    os.truncate(str(store / "{}-s3".format(TINY_ID) / "tail.onnx"), 100)
    one_line(serve_cloud(held_port, store, cwd), "{}-s2 is damaged: head.pt is corrupt: sha256".format(TINY_ID),
             "(1 more damaged: {}-s3)".format(TINY_ID))


def test_serve_cloud_verifies_a_sound_store_and_says_so(tiny_bundles):
    srv = ServerProcess(tiny_bundles)
    assert srv.stop() == 0, srv.log_text()
    held = len(TINY_SPLITS) + 1  # a bundle per split, and the segments
    assert "verified the files of {} bundles against their manifests".format(held) in srv.log_text()


# ---------------------------------------------------------------- 6. files that are not what a command takes

@pytest.mark.parametrize("command", ["run-edge", "sweep"])
def test_an_npz_that_is_json_is_refused_before_connecting(command, files, tiny_bundles, cwd, tmp_path):
    server = ServerProcess(tiny_bundles)
    cache = tmp_path / "cache"
    split = ("--split", 3) if command == "run-edge" else ("--splits", "3")
    try:
        proc = run_cli(command, "--cloud", server.address, "--model", TINY_ID, *split, "--cache", cache,
                       "--dataset", "npz:" + str(files / "labels.json"), "--limit", 4, cwd=str(cwd))
    finally:
        assert server.stop() == 0, server.log_text()
    one_line(proc, "{} {}: it is not a zip archive (it begins b'{{\"x\": [[1, 2]], ')".format(
        files / "labels.json", NOT_NPZ), "make one with numpy.savez(PATH, x=images, y=labels)")
    assert "summary: 0 connections" in server.log_text()
    assert not cache.exists() and os.listdir(str(cwd)) == []


def test_an_npz_of_python_objects_is_refused_without_unpickling(files, tiny_bundles, tmp_path):
    """Its listing is sound, so the run connects (and says what it fetches); its arrays are read once the bundle's
    input is known."""
    server = ServerProcess(tiny_bundles)
    try:
        proc = run_cli("run-edge", "--cloud", server.address, "--model", TINY_ID, "--split", 3, "--cache",
                       tmp_path / "cache", "--dataset", "npz:" + str(files / "objects.npz"), "--limit", 2)
    finally:
        assert server.stop() == 0, server.log_text()
    one_line(proc, NOT_NPZ, "its array y holds Python objects (dtype object), which are never unpickled", alone=False)


def test_demo_checks_its_dataset_before_exporting(files, cwd, tmp_path):
    artifacts = tmp_path / "artifacts"
    one_line(run_cli("demo", "--dataset", "npz:" + str(files / "labels.json"), "--artifacts", artifacts,
                     cwd=str(cwd)), NOT_NPZ)
    assert not artifacts.exists() and os.listdir(str(cwd)) == []


@pytest.mark.parametrize("command", ["export", "layers"])
def test_garbage_weights_are_described_not_relayed_from_torch(command, files, cwd, tmp_path):
    out = tmp_path / "out"
    args = ("--split", 3, "--out", out) if command == "export" else ()
    one_line(run_cli(command, "--model", TINY, "--weights", files / "garbage.pth", *args, cwd=str(cwd)),
             "weights file {} {}: torch.save did not write it (it begins b'this is not a ch')".format(
                 files / "garbage.pth", STATE_DICT), "give the state dict of {} saved by torch.save".format(TINY_ID))
    assert not out.exists() and os.listdir(str(cwd)) == []


def test_a_whole_pickled_model_is_never_unpickled(files, cwd, tmp_path):
    """torch.save(model) pickles the model's class: torch's safe loader refuses it, and so does export, without
    suggesting the unsafe one."""
    from tiny_models import classifier
    whole = tmp_path / "whole.pth"
    torch.save(classifier(), str(whole))
    one_line(run_cli("export", "--model", TINY, "--split", 3, "--weights", whole, "--out", tmp_path / "out",
                     cwd=str(cwd)),
             STATE_DICT, "it pickles a tiny_models.Classifier object, which is never unpickled here")
    assert not (tmp_path / "out").exists()
