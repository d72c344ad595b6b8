"""export-triton: a bundle's tail as a Triton model repository entry, its config parsed back with Triton's own
schema (tritonclient's model_config_pb2) and checked against the model file.  Real `cli.py export-triton`
subprocesses on the tests' tiny model (tests/fixtures/tiny_models.py).

Serving these entries needs a Triton server: the onnxruntime and pytorch backends are not in the one that
installs here (nvidia-pytriton bundles the python backend only), so those configs are checked by parsing and
against their model files, as NVIDIA's container would load them.
"""
import filecmp
import hashlib
import os
import shutil

import numpy as np
import pytest
from conftest import TINY_ID, run_cli, tiny_bundle

pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient (the triton extra) is missing")

from runtime.bundle.manifest import load_manifest  # noqa: E402
from runtime.cloud.triton import check_entry, check_input_dtype, manifest_sha256, read_config  # noqa: E402
from runtime.errors import UserError  # noqa: E402


def export(bundle, repo, *args):
    return run_cli("export-triton", bundle, "--repo", repo, *args)


def one_line_error(proc):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and lines and lines[-1].startswith("error: ") and "Traceback" not in proc.stderr, \
        proc.stderr
    return lines[-1]


def tensors(config):
    return [(t.name, pb2.DataType.Name(t.data_type), list(t.dims)) for t in list(config.input) + list(config.output)]


def test_onnxruntime_entry_takes_the_boundary_and_gives_the_logits_with_a_dynamic_batch(tiny_bundles, tmp_path):
    bundle = tiny_bundle(tiny_bundles, 4)
    proc = export(bundle, tmp_path / "repo", "--max-batch", 16, "--preferred-batch", "4,8", "--instances", 2,
                  "--kind", "gpu", "--tensorrt", "--max-queue-delay-us", 250)
    assert proc.returncode == 0, proc.stderr
    entry = tmp_path / "repo" / (TINY_ID + "-s4")
    assert "triton model {}-s4 (onnxruntime)".format(TINY_ID) in proc.stdout
    assert sorted(os.listdir(str(entry))) == ["1", "config.pbtxt"] and os.listdir(str(entry / "1")) == ["model.onnx"]
    assert filecmp.cmp(str(entry / "1" / "model.onnx"), str(bundle / "tail.onnx"), shallow=False)
    config = read_config(str(entry))
    assert config.name == TINY_ID + "-s4" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 16
    assert tensors(config) == [("boundary", "TYPE_FP32", [8, 16, 16]), ("output", "TYPE_FP32", [10])]
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 250
    assert [(g.count, pb2.ModelInstanceGroup.Kind.Name(g.kind)) for g in config.instance_group] == [(2, "KIND_GPU")]
    assert [a.name for a in config.optimization.execution_accelerators.gpu_execution_accelerator] == ["tensorrt"]
    manifest = load_manifest(str(bundle))
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params == {"bundle_id": manifest.bundle_id, "manifest_sha256": manifest_sha256(str(bundle)),
                      "model_id": TINY_ID, "split": "4"}
    assert [n for n in os.listdir(str(tmp_path / "repo")) if n.startswith(".")] == []  # no temporary dir left


def test_pytorch_entry_uses_tritons_libtorch_names(tiny_bundles, tmp_path):
    bundle = tiny_bundle(tiny_bundles, 5)
    proc = export(bundle, tmp_path / "repo", "--platform", "pytorch", "--name", "tail5", "--version", 3)
    assert proc.returncode == 0, proc.stderr
    entry = tmp_path / "repo" / "tail5"
    config = read_config(str(entry))
    assert config.platform == "pytorch_libtorch"
    assert tensors(config) == [("INPUT__0", "TYPE_FP32", [8, 8, 8]), ("OUTPUT__0", "TYPE_FP32", [10])]
    assert filecmp.cmp(str(entry / "3" / "model.pt"), str(bundle / "tail.pt"), shallow=False)


def test_python_entry_carries_the_tail_its_manifest_and_the_runtime_settings(tiny_bundles, tmp_path):
    bundle = tiny_bundle(tiny_bundles, 3)
    proc = export(bundle, tmp_path / "repo", "--platform", "python", "--backend", "torchscript", "--max-batch", 0)
    assert proc.returncode == 0, proc.stderr
    entry = tmp_path / "repo" / (TINY_ID + "-s3")
    assert sorted(os.listdir(str(entry / "1"))) == ["manifest.json", "model.py", "tail.onnx", "tail.pt"]
    config = read_config(str(entry))
    assert config.backend == "python" and config.platform == "" and config.max_batch_size == 0
    assert not config.HasField("dynamic_batching")  # nothing to batch without a batch dimension
    assert tensors(config)[0] == ("boundary", "TYPE_FP32", [-1, 8, 16, 16])  # the edge's batch, whole
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["backend"] == "torchscript" and params["device"] == "auto"
    assert os.path.isfile(os.path.join(params["runtime_path"], "runtime", "backends", "__init__.py"))
    load_manifest(str(entry / "1")).verify_files(parts=("tail",))


def test_a_config_that_disagrees_with_its_model_file_or_bundle_is_refused(tiny_bundles, tmp_path):
    bundle = tiny_bundle(tiny_bundles, 4)
    manifest, sha = load_manifest(str(bundle)), manifest_sha256(str(bundle))
    assert export(bundle, tmp_path / "repo").returncode == 0
    entry = tmp_path / "repo" / (TINY_ID + "-s4")
    check_entry(str(entry), manifest, "onnxruntime", sha)  # as written: consistent
    text = (entry / "config.pbtxt").read_text()
    (entry / "config.pbtxt").write_text(text.replace("dims: 16\n  dims: 16", "dims: 16\n  dims: 32", 1))
    with pytest.raises(UserError, match="the config declares .* but the bundle's tail takes"):
        check_entry(str(entry), manifest, "onnxruntime", sha)
    (entry / "config.pbtxt").write_text(text)
    shutil.copyfile(str(tiny_bundle(tiny_bundles, 5) / "tail.onnx"), str(entry / "1" / "model.onnx"))
    with pytest.raises(UserError, match="does not match the config's boundary"):
        check_entry(str(entry), manifest, "onnxruntime", sha)  # another split's tail under this config
    (entry / "config.pbtxt").write_text(text.replace("max_batch_size", "max_batch_sizes"))
    with pytest.raises(UserError, match="not a Triton model config"):
        read_config(str(entry))


def test_re_export_replaces_the_entry_whole(tiny_bundles, tmp_path):
    repo = tmp_path / "repo"
    assert export(tiny_bundle(tiny_bundles, 4), repo, "--name", "m", "--platform", "python").returncode == 0
    assert export(tiny_bundle(tiny_bundles, 2), repo, "--name", "m").returncode == 0
    assert os.listdir(str(repo / "m" / "1")) == ["model.onnx"]  # no file of the python entry is left behind
    assert tensors(read_config(str(repo / "m")))[0] == ("boundary", "TYPE_FP32", [8, 16, 16])
    assert sorted(os.listdir(str(repo))) == ["m"]


@pytest.mark.parametrize("split,args,fragments", [
    (7, (), ("has no tail", "export another split")),
    (4, ("--platform", "python", "--tensorrt"), ("--tensorrt is an onnxruntime accelerator",)),
    (4, ("--preferred-batch", "4,32"), ("--preferred-batch sizes must lie in 1..--max-batch (8)",)),
    (4, ("--input-dtype", "int8"), ("unknown --input-dtype 'int8'", "choose float32 or float16")),
    (4, ("--platform", "pytorch", "--input-dtype", "fp16"), ("unknown --input-dtype 'fp16'",)),
])
def test_what_cannot_make_an_entry_is_one_line_and_leaves_nothing(split, args, fragments, tiny_bundles, tmp_path):
    proc = export(tiny_bundle(tiny_bundles, split), tmp_path / "repo", *args)
    line = one_line_error(proc)
    assert all(f in line for f in fragments), line
    assert not (tmp_path / "repo").exists() or os.listdir(str(tmp_path / "repo")) == []


def test_bad_bundles_platforms_and_repositories(tiny_bundles, tmp_path):
    onnx_only = tmp_path / "onnx-only"
    shutil.copytree(str(tiny_bundle(tiny_bundles, 4)), str(onnx_only))
    proc = run_cli("export", "--model", "tiny_models:classifier", "--split", 4, "--random-init", "--formats", "onnx",
                   "--artifacts", onnx_only)
    assert proc.returncode == 0, proc.stderr
    line = one_line_error(export(onnx_only / (TINY_ID + "-s4"), tmp_path / "repo", "--platform", "pytorch"))
    assert "no torchscript tail" in line and "--formats torchscript" in line
    assert "no bundle at" in one_line_error(export(tmp_path / "nothing", tmp_path / "repo"))
    tampered = tmp_path / "tampered"
    shutil.copytree(str(tiny_bundle(tiny_bundles, 4)), str(tampered))
    with open(str(tampered / "tail.onnx"), "r+b") as f:
        f.seek(100)
        f.write(b"bitrot")
    assert "tail.onnx is corrupt: sha256" in one_line_error(export(tampered, tmp_path / "repo"))
    (tmp_path / "a-file").write_text("")
    line = one_line_error(export(tiny_bundle(tiny_bundles, 4), tmp_path / "a-file" / "repo"))
    assert "cannot write the Triton model" in line and "nothing was left there" in line
    usage = export(tiny_bundle(tiny_bundles, 4), tmp_path / "repo", "--platform", "tensorflow")
    assert usage.returncode == 2 and "tensorflow" in usage.stderr and "Traceback" not in usage.stderr
    assert not (tmp_path / "repo").exists()


# --input-dtype float16: the tail takes what `run-edge --compress fp16` sends, the cast to float32 compiled in

def sha256(path):
    with open(str(path), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def activation(bundle, n=32, seed=3):
    """The bundle's boundary for ``n`` random images, as its own fp32 head gives it."""
    from runtime.backends.ort import cpu_session
    head = cpu_session(str(bundle / "head.onnx"))
    x = np.random.RandomState(seed).randn(n, *head.get_inputs()[0].shape[1:]).astype(np.float32)
    return head.run(None, {head.get_inputs()[0].name: x})[0]


def assert_close_to_fp32(got, ref):
    """fp16 rounding of the activation: values within 1e-2 of the logits' scale, the same top-1 where it is clear."""
    scale = float(np.abs(ref).max())
    assert got.shape == ref.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-2 * scale)
    top2 = np.sort(ref, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2e-2 * scale
    assert clear.sum() >= len(ref) // 2
    assert (got.argmax(1) == ref.argmax(1))[clear].all()


def test_onnxruntime_entry_with_a_float16_input_casts_inside_and_leaves_the_bundle_alone(tiny_bundles, tmp_path):
    from runtime.backends.ort import cpu_session
    bundle = tiny_bundle(tiny_bundles, 4)
    before = sha256(bundle / "tail.onnx")
    proc = export(bundle, tmp_path / "repo", "--input-dtype", "float16")
    assert proc.returncode == 0, proc.stderr
    entry = tmp_path / "repo" / (TINY_ID + "-s4")
    assert sha256(bundle / "tail.onnx") == before
    load_manifest(str(bundle)).verify_files(parts=("tail",))
    assert os.listdir(str(entry / "1")) == ["model.onnx"]
    config = read_config(str(entry))
    assert tensors(config) == [("boundary", "TYPE_FP16", [8, 16, 16]), ("output", "TYPE_FP32", [10])]
    assert config.parameters["input_dtype"].string_value == "float16"
    session = cpu_session(str(entry / "1" / "model.onnx"))
    assert [(t.name, t.type) for t in session.get_inputs()] == [("boundary", "tensor(float16)")]
    x = activation(bundle)
    got = session.run(None, {"boundary": x.astype(np.float16)})[0]
    tail = cpu_session(str(bundle / "tail.onnx"))
    assert_close_to_fp32(got, tail.run(None, {"boundary": x})[0])
    manifest, sha = load_manifest(str(bundle)), manifest_sha256(str(bundle))
    check_entry(str(entry), manifest, "onnxruntime", sha)
    shutil.copyfile(str(bundle / "tail.onnx"), str(entry / "1" / "model.onnx"))  # the fp32 tail under the fp16 config
    with pytest.raises(UserError, match="tensor\\(float\\) .* does not match the config's boundary tensor\\(float16\\)"):
        check_entry(str(entry), manifest, "onnxruntime", sha)


def test_pytorch_entry_with_a_float16_input_is_a_scripted_cast_before_the_tail(tiny_bundles, tmp_path):
    torch = pytest.importorskip("torch")
    bundle = tiny_bundle(tiny_bundles, 5)
    before = sha256(bundle / "tail.pt")
    proc = export(bundle, tmp_path / "repo", "--platform", "pytorch", "--input-dtype", "float16", "--name", "t")
    assert proc.returncode == 0, proc.stderr
    assert sha256(bundle / "tail.pt") == before
    config = read_config(str(tmp_path / "repo" / "t"))
    assert tensors(config) == [("INPUT__0", "TYPE_FP16", [8, 8, 8]), ("OUTPUT__0", "TYPE_FP32", [10])]
    x = activation(bundle)
    with torch.no_grad():
        got = torch.jit.load(str(tmp_path / "repo" / "t" / "1" / "model.pt"))(torch.from_numpy(x).half())
        ref = torch.jit.load(str(bundle / "tail.pt"))(torch.from_numpy(x))
    assert got.dtype == torch.float32
    assert_close_to_fp32(got.numpy(), ref.numpy())


def test_python_entry_with_a_float16_input_declares_it(tiny_bundles, tmp_path):
    """The cast itself runs in a real Triton server: tests/test_triton_serve.py."""
    bundle = tiny_bundle(tiny_bundles, 4)
    proc = export(bundle, tmp_path / "repo", "--platform", "python", "--input-dtype", "float16", "--name", "p")
    assert proc.returncode == 0, proc.stderr
    config = read_config(str(tmp_path / "repo" / "p"))
    assert tensors(config)[0] == ("boundary", "TYPE_FP16", [8, 16, 16])
    assert config.parameters["input_dtype"].string_value == "float16"


class Manifest(dict):
    directory = "b"


def test_float16_input_needs_a_float32_boundary():
    check_input_dtype(Manifest(boundary={"dtype": "float32"}), "float16")
    check_input_dtype(Manifest(boundary={"dtype": "float16"}), "float16")
    check_input_dtype(Manifest(boundary={"dtype": "float32"}), None)
    for boundary, asked in (("int8", "float16"), ("float16", "float32")):
        with pytest.raises(UserError, match="--input-dtype {} does not fit bundle b's {} boundary".format(
                asked, boundary)):
            check_input_dtype(Manifest(boundary={"dtype": boundary}), asked)
