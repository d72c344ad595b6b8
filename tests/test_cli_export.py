"""`cli.py layers` and `cli.py export` as a user runs them: real subprocesses, real files."""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import onnx
import pytest
import torch
from conftest import REPO, run_cli

from runtime.bundle.manifest import load_manifest


def assert_one_line_error(proc, *fragments):
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_layers_json_lists_the_seed_points():
    proc = run_cli("layers", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["model"] == "resnet50"
    points = data["points"]
    assert [p["index"] for p in points] == list(range(23))
    assert points[20]["name"] == "avg_pool" and points[20]["shape"] == [2048, 1, 1]
    assert points[3]["bytes_per_sample"] == 262144
    assert points[22]["head_params"] == 23705252
    assert points[22]["head_flops"] > points[20]["head_flops"] > points[3]["head_flops"] > 0


def test_layers_table_for_a_torchvision_model():
    proc = run_cli("layers", "--model", "torchvision:resnet18", "--input-shape", "3,64,64")
    assert proc.returncode == 0, proc.stderr
    assert "torchvision-resnet18" in proc.stdout
    assert "all on edge" in proc.stdout and "all on cloud" in proc.stdout
    # a block's output is named by the block (not by the ReLU that ends it), with its class
    rows = {line.split("│")[2].strip(): line.split("│")[3].strip() for line in proc.stdout.splitlines()
            if line.count("│") >= 8}
    assert rows["layer4.0"] == "BasicBlock" and rows["layer1.1"] == "BasicBlock" and "layer4.1.relu" not in rows


def _sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_export_split_20_random_init_writes_a_verified_bundle(tmp_path):
    proc = run_cli("export", "--split", "20", "--random-init", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    bundle = tmp_path / "resnet50-s20"
    assert sorted(os.listdir(str(bundle))) == ["head.onnx", "head.pt", "manifest.json", "tail.onnx", "tail.pt"]
    assert [p for p in os.listdir(str(tmp_path)) if p.startswith(".")] == []
    assert "RANDOM INIT" in proc.stdout and bundle.name in proc.stdout
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["model"]["weights"]["random_init"] is True
    assert manifest["split"] == dict(manifest["split"], index=20, name="avg_pool")
    assert manifest["input"]["shape"] == [None, 3, 32, 32]
    assert manifest["input"]["preprocess"]["mean"] == [0.5071, 0.4867, 0.4408]
    assert manifest["input"]["preprocess"]["std"] == [0.2675, 0.2565, 0.2761]
    assert manifest["boundary"]["shape"] == [None, 2048, 1, 1]
    assert manifest["output"]["shape"] == [None, 100]
    for part in ("head", "tail"):
        for fmt, entry in manifest["parts"][part]["files"].items():
            path = str(bundle / entry["file"])
            assert entry["sha256"] == _sha256(path)
            assert entry["bytes"] == os.path.getsize(path)
            if fmt == "onnx":
                model = onnx.load(path)
                assert model.ir_version <= 8 and entry["ir_version"] == model.ir_version
                assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [15]
                dims = model.graph.input[0].type.tensor_type.shape.dim
                assert dims[0].dim_param == "batch"  # dynamic batch axis
    results = manifest["verification"]["results"]
    assert {(r["format"], r["batch_size"]) for r in results} == {
        (f, b) for f in ("onnx", "torchscript") for b in (1, 4)}
    assert all(r["passed"] and r["max_abs_diff"] < 1e-4 for r in results)
    assert manifest["toolchain"]["torch"] == torch.__version__
    load_manifest(str(bundle)).verify_files()


def test_export_a_user_model_with_another_opset_and_one_format(tmp_path):
    proc = run_cli("export", "--model", "tiny_models:build", "--split", "2", "--random-init",
                   "--formats", "onnx", "--opset", "13", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    bundle = tmp_path / "tiny_models-build-s2"
    assert sorted(os.listdir(str(bundle))) == ["head.onnx", "manifest.json", "tail.onnx"]
    model = onnx.load(str(bundle / "head.onnx"))
    assert model.ir_version == 7 and [o.version for o in model.opset_import] == [13]


def test_reexport_replaces_the_bundle_and_a_failed_export_leaves_the_old_one_intact(tmp_path):
    args = ("export", "--model", "tiny_models:build", "--random-init", "--out", tmp_path)
    assert run_cli(*(args + ("--split", "2"))).returncode == 0
    bundle = tmp_path / "tiny_models-build-s2"
    before = (bundle / "manifest.json").read_text()
    assert run_cli(*(args + ("--split", "2"))).returncode == 0  # a re-export replaces it
    before = (bundle / "manifest.json").read_text()
    proc = run_cli(*(args + ("--split", "2", "--opset", "99")))
    assert_one_line_error(proc, "opset 99")
    assert (bundle / "manifest.json").read_text() == before
    load_manifest(str(bundle)).verify_files()
    assert sorted(os.listdir(str(tmp_path))) == ["tiny_models-build-s2"]  # no temp dir left


def test_random_init_never_reads_the_default_weights(tmp_path):
    """--random-init exports untrained weights even where weights/resnet50-best.pth is present (here, one torch cannot
    read: reading it at all would fail the export), and the manifest records no weights file."""
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "resnet50-best.pth").write_text("not a state dict")
    proc = run_cli("export", "--split", "22", "--random-init", "--formats", "onnx", "--out", tmp_path / "out",
                   cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    weights = json.loads((tmp_path / "out" / "resnet50-s22" / "manifest.json").read_text())["model"]["weights"]
    assert weights["random_init"] is True and weights["path"] is None and weights["sha256"] is None


def test_export_by_split_name(tmp_path):
    proc = run_cli("export", "--split", "fc", "--random-init", "--formats", "onnx", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "resnet50-s22" / "manifest.json").read_text())
    assert manifest["parts"]["tail"] is None and manifest["split"]["last"] is True


@pytest.fixture(scope="module")
def bad_weights(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "corrupt.pth").write_bytes(os.urandom(4096))
    import torchvision.models as tvm
    torch.save(tvm.resnet18().state_dict(), str(d / "resnet18.pth"))
    from seed_reference import make_state_dict
    state = make_state_dict()
    state["fc.weight"] = torch.zeros(10, 2048)
    state["fc.bias"] = torch.zeros(10)
    torch.save(state, str(d / "cifar10-head.pth"))
    return d


@pytest.mark.parametrize("args,fragments", [
    (("--model", "nosuchmodel", "--split", "3", "--random-init"), ("unknown model", "torchvision:NAME")),
    (("--model", "torchvision:nosuchnet", "--split", "3", "--random-init"), ("unknown torchvision", "resnet18")),
    (("--model", "no_such_pkg.mod:build", "--split", "1", "--random-init"), ("cannot import", "no_such_pkg")),
    (("--model", "tiny_models:not_a_module", "--split", "1", "--random-init", "--input-shape", "3,8,8"),
     ("not a torch.nn.Module",)),
    (("--split", "23", "--random-init"), ("split 23 is out of range", "0..22")),
    (("--split", "conv2_x.0.residual_function.3", "--random-init"),
     ("not a valid split point", "20=avg_pool")),
    (("--split", "3"), ("no weights file", "weights/resnet50-best.pth", "--random-init")),
    (("--split", "3", "--weights", "missing.pth"), ("missing.pth not found",)),
    (("--split", "3", "--weights", "{bad}/corrupt.pth"), ("corrupt.pth is not a PyTorch state dict of resnet50",
                                                         "torch.save(model.state_dict(), PATH)")),
    (("--split", "3", "--weights", "{bad}/resnet18.pth"), ("is not a PyTorch state dict of resnet50",
                                                          "missing conv1.0.weight", "another model")),
    (("--split", "3", "--weights", "{bad}/cifar10-head.pth"), ("wrong shape for fc.weight (10, 2048)",)),
    (("--split", "3", "--weights", "w.pth", "--random-init"), ("contradict",)),
    (("--split", "20", "--random-init", "--out", "{bad}/corrupt.pth/sub"), ("cannot write to output directory",)),
    (("--split", "20", "--random-init", "--formats", "pdf"), ("unknown format pdf",)),
    (("--split", "20", "--random-init", "--input-shape", "3,x,32"), ("--input-shape",)),
])
def test_export_bad_input_gets_one_clear_line(args, fragments, bad_weights, tmp_path):
    args = [a.replace("{bad}", str(bad_weights)) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    proc = run_cli("export", *args, cwd=str(tmp_path))
    if "--formats" in args or "3,x,32" in args:  # click's usage errors: exit 2, naming the option
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert all(f in proc.stderr for f in fragments), proc.stderr
    else:
        assert_one_line_error(proc, *fragments)
    out = tmp_path / "out"
    assert not out.exists() or os.listdir(str(out)) == []


def test_debug_flag_shows_the_traceback(tmp_path):
    proc = run_cli("--debug", "export", "--split", "99", "--random-init", "--out", tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "out of range" in proc.stderr


def test_console_script_does_what_cli_py_does():
    script = shutil.which("edgesplit") or os.path.join(os.path.dirname(sys.executable), "edgesplit")
    if not os.path.exists(script):
        pytest.skip("the edgesplit console script is not installed (pip install -e .)")
    proc = subprocess.run([script, "layers", "--json"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == json.loads(run_cli("layers", "--json").stdout)


def test_a_degenerate_reference_is_said_in_one_line_and_recorded_not_meaningful(tmp_path):
    """An all-zero classifier (vit_b_16's at random init): the output checks nothing; the boundary still counts."""
    proc = run_cli("export", "--model", "tiny_models:zero_head", "--split", "2", "--random-init", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = [l for l in proc.stdout.splitlines() if "NOT MEANINGFUL" in l]
    assert len(lines) == 1 and "output all zero" in lines[0] and "still checked: boundary" in lines[0], proc.stdout
    ver = load_manifest(str(tmp_path / "tiny_models-zero_head-s2")).data["verification"]
    assert ver["meaningful"] is False and ver["reason"].startswith("output all zero")
    assert {r["tensor"]: r["degenerate"] for r in ver["results"]} == {"boundary": None, "output": "all zero"}


def test_random_init_efficientnet_logits_are_too_small_to_verify_and_export_says_so(tmp_path):
    proc = run_cli("export", "--model", "torchvision:efficientnet_b0", "--random-init", "--input-shape", "3,64,64",
                   "--split", "5", "--formats", "onnx", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "NOT MEANINGFUL: output spread over" in proc.stdout and "a constant would pass" in proc.stdout
    ver = load_manifest(str(tmp_path / "torchvision-efficientnet_b0-s5")).data["verification"]
    assert ver["meaningful"] is False
    out = [r for r in ver["results"] if r["tensor"] == "output"]
    assert all(r["reference_max_abs"] < 1e-10 for r in out)


def test_realistic_weights_export_at_split_19_with_the_manifest_record(tmp_path, seed_weights):
    proc = run_cli("export", "--weights", seed_weights, "--split", "19", "--formats", "onnx", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr  # refused (5e-4 abs diff) by the elementwise rule
    assert "NOT MEANINGFUL" not in proc.stdout and "(rel " in proc.stdout
    ver = load_manifest(str(tmp_path / "resnet50-s19")).data["verification"]
    assert ver["meaningful"] is True and ver["rule"].startswith("max|actual - reference| <= atol + rtol * max")
    assert 0 < ver["max_rel_diff"] < ver["rtol"] / 5
    for r in ver["results"]:
        assert r["max_rel_diff"] == pytest.approx(r["max_abs_diff"] / r["reference_max_abs"])
