"""A bundle's tail as an entry of an NVIDIA Triton Inference Server model repository.

``export-triton`` writes, for one bundle::

    REPO/<name>/config.pbtxt
    REPO/<name>/<version>/model.onnx            --platform onnxruntime (onnxruntime_onnx)
    REPO/<name>/<version>/model.pt              --platform pytorch     (pytorch_libtorch)
    REPO/<name>/<version>/model.py + the tail   --platform python      (this project's backends)

The config is built as Triton's own ``ModelConfig`` message (tritonclient's
``model_config_pb2``), from the manifest alone: the tail's input is the bundle's
boundary, its output the model's output, both with a dynamic batch dimension
(``max_batch_size``), their dtypes and per-sample dims from the manifest.  The
bundle id and the manifest's sha256 go into ``parameters``, so an edge can check
that the tail it is about to use pairs with its head (as HELLO does with
serve-cloud).  TorchScript tails take Triton's libtorch names (``INPUT__0``,
``OUTPUT__0``); ONNX and python tails keep the manifest's names.

Before anything is installed, the written config is parsed back from its text and
checked against the model file: an ONNX file's input and output names, dtypes and
dims as onnxruntime reads them, a TorchScript file's one-tensor forward, the
python entry's copied files against their sha256.  The entry is written in a
temporary directory beside it and renamed into place (``bundle.staging``): a bad
config or a failed copy leaves the repository as it was.
"""
import os
import shutil

from runtime.bundle.manifest import KIND_SPLIT, MANIFEST_NAME, ManifestError, load_manifest, sha256_file
from runtime.bundle.staging import install_dir, staged
from runtime.errors import UserError
from runtime.options import Options

# --platform: (Triton's platform or backend, the bundle's format, the file name Triton looks for)
PLATFORMS = {
    "onnxruntime": ("onnxruntime_onnx", "onnx", "model.onnx"),
    "pytorch": ("pytorch_libtorch", "torchscript", "model.pt"),
    "python": ("python", None, "model.py"),
}
KINDS = ("cpu", "gpu")
# the manifest's dtypes as Triton's
DATA_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8",
              "int64": "TYPE_INT64"}
ONNX_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)", "int8": "tensor(int8)",
              "uint8": "tensor(uint8)", "int64": "tensor(int64)"}
PYTHON_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "triton_model.py")
RUNTIME_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class TritonOptions(Options):
    repo = None                 # the model repository (created if missing)
    name = None                 # the model's name in it (default: <model id>-s<split>)
    version = 1
    platform = "onnxruntime"
    max_batch = 8               # Triton's max_batch_size (0: no batching, the batch dimension fixed by the edge)
    max_queue_delay_us = 100    # dynamic batching: how long a request may wait for others
    preferred_batch = ()        # dynamic batching: batch sizes Triton aims for
    instances = 1               # instance_group count ...
    kind = "cpu"                # ... and kind (KIND_CPU or KIND_GPU)
    tensorrt = False            # onnxruntime: TensorRT as the GPU execution accelerator
    backend = "onnx"            # python: which of this project's backends runs the tail ...
    device = "auto"             # ... on which device
    runtime_path = RUNTIME_ROOT  # python: where the stub finds this project's runtime/ (a path in the server)


def _pb2():
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except (ImportError, RuntimeError) as exc:
        raise UserError("export-triton needs tritonclient for Triton's config schema ({}); install the triton "
                        "extra: pip install -e '.[triton]'".format(exc))
    return model_config_pb2, text_format


def manifest_sha256(bundle_dir):
    return sha256_file(os.path.join(bundle_dir, MANIFEST_NAME))


def tensor_names(platform, manifest):
    """(input name, output name) of the tail as Triton sees them."""
    if platform == "pytorch":
        return "INPUT__0", "OUTPUT__0"
    return manifest["boundary"]["name"], manifest["output"]["name"]


def dims(spec, max_batch):
    """A tensor's dims in the config: per sample when Triton batches (max_batch_size > 0), else with the batch
    dimension first, variable (-1)."""
    return list(spec["shape"][1:]) if max_batch > 0 else [-1] + list(spec["shape"][1:])


def model_config(manifest, options, sha256):
    """Triton's ModelConfig message for the bundle's tail (nothing written)."""
    pb2, _ = _pb2()
    o = options
    backend, _, _ = PLATFORMS[o.platform]
    config = pb2.ModelConfig(name=o.name, max_batch_size=o.max_batch)
    if o.platform == "python":
        config.backend = backend
    else:
        config.platform = backend
    in_name, out_name = tensor_names(o.platform, manifest)
    for repeated, name, spec in ((config.input, in_name, manifest["boundary"]),
                                 (config.output, out_name, manifest["output"])):
        tensor = repeated.add(name=name, data_type=pb2.DataType.Value(DATA_TYPES[spec["dtype"]]))
        tensor.dims.extend(dims(spec, o.max_batch))
    if o.max_batch > 0:
        config.dynamic_batching.max_queue_delay_microseconds = o.max_queue_delay_us
        config.dynamic_batching.preferred_batch_size.extend(o.preferred_batch)
    group = config.instance_group.add(count=o.instances)
    group.kind = pb2.ModelInstanceGroup.KIND_GPU if o.kind == "gpu" else pb2.ModelInstanceGroup.KIND_CPU
    if o.tensorrt:
        config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
    parameters = {"bundle_id": manifest.bundle_id, "manifest_sha256": sha256, "model_id": manifest.model_id,
                  "split": str(manifest.split_index)}
    if o.platform == "python":
        parameters.update(backend=o.backend, device=o.device, runtime_path=o.runtime_path)
    for key, value in sorted(parameters.items()):
        config.parameters[key].string_value = value
    return config


def check_options(manifest, options):
    """Refuse, in one line, what cannot make a repository entry of this bundle."""
    o = options
    if o.platform not in PLATFORMS:
        raise UserError("unknown --platform {!r}; choose from {}".format(o.platform, ", ".join(sorted(PLATFORMS))))
    if o.kind not in KINDS:
        raise UserError("unknown --kind {!r}; choose cpu or gpu".format(o.kind))
    if manifest.kind != KIND_SPLIT or manifest.part("tail") is None:
        raise UserError("bundle {} has no tail (split {} runs the whole model on the edge); export another split "
                        "for Triton".format(manifest.directory, manifest.split_index))
    if o.tensorrt and o.platform != "onnxruntime":
        raise UserError("--tensorrt is an onnxruntime accelerator; use it with --platform onnxruntime")
    if o.max_batch < 0 or o.instances < 1 or o.version < 1 or o.max_queue_delay_us < 0:
        raise UserError("--max-batch and --max-queue-delay-us must be 0 or more, --instances and --version 1 or "
                        "more")
    if any(b < 1 or (o.max_batch and b > o.max_batch) for b in o.preferred_batch):
        raise UserError("--preferred-batch sizes must lie in 1..--max-batch ({})".format(o.max_batch))
    fmt = PLATFORMS[o.platform][1]
    formats = manifest.part("tail")["files"]
    if fmt is not None and fmt not in formats:
        raise UserError("bundle {} has no {} tail for --platform {}; re-export it with --formats {}".format(
            manifest.directory, fmt, o.platform, fmt))


def export_triton(bundle_dir, options):
    """Write the bundle's tail into the repository; return (the entry's directory, its config as text)."""
    o = options
    try:
        manifest = load_manifest(bundle_dir)
        manifest.verify_files(parts=("tail",))
    except ManifestError as exc:
        raise UserError(str(exc))
    check_options(manifest, o)
    if o.name is None:
        o = o.replace(name="{}-s{}".format(manifest.model_id, manifest.split_index))
    _, text_format = _pb2()
    sha256 = manifest_sha256(bundle_dir)
    text = text_format.MessageToString(model_config(manifest, o, sha256))
    entry = os.path.join(o.repo, o.name)
    try:
        with staged(o.repo, "export") as tmp:
            version = os.path.join(tmp, str(o.version))
            os.makedirs(version)
            _write_model(manifest, o, version)
            with open(os.path.join(tmp, "config.pbtxt"), "w") as f:
                f.write(text)
            check_entry(tmp, manifest, o.platform, sha256)
            install_dir(tmp, entry)
    except OSError as exc:
        raise UserError("cannot write the Triton model {} into {} ({}); nothing was left there".format(
            o.name, o.repo, exc.strerror or exc))
    return entry, text


def _write_model(manifest, o, version):
    _, fmt, file_name = PLATFORMS[o.platform]
    tail = manifest.part("tail")["files"]
    if fmt is not None:
        shutil.copyfile(manifest.file_path("tail", fmt), os.path.join(version, file_name))
        return
    shutil.copyfile(PYTHON_MODEL, os.path.join(version, file_name))
    shutil.copyfile(os.path.join(manifest.directory, MANIFEST_NAME), os.path.join(version, MANIFEST_NAME))
    for entry in tail.values():
        shutil.copyfile(os.path.join(manifest.directory, entry["file"]), os.path.join(version, entry["file"]))


def read_config(entry_dir):
    """The ModelConfig of a repository entry, parsed from its config.pbtxt (UserError if it does not parse)."""
    pb2, text_format = _pb2()
    path = os.path.join(entry_dir, "config.pbtxt")
    try:
        with open(path) as f:
            return text_format.Parse(f.read(), pb2.ModelConfig())
    except (OSError, text_format.ParseError) as exc:
        raise UserError("{}: not a Triton model config ({})".format(path, exc))


def check_entry(entry_dir, manifest, platform, sha256):
    """Parse the entry's config back and check it against its model file and the bundle; raise UserError."""
    pb2, _ = _pb2()
    config = read_config(entry_dir)
    versions = [d for d in os.listdir(entry_dir) if d.isdigit()]
    version = os.path.join(entry_dir, max(versions, key=int))
    in_name, out_name = tensor_names(platform, manifest)
    expected = [(in_name, manifest["boundary"]), (out_name, manifest["output"])]
    declared = [(t.name, pb2.DataType.Name(t.data_type), list(t.dims)) for t in list(config.input) + list(config.output)]
    wanted = [(name, DATA_TYPES[spec["dtype"]], dims(spec, config.max_batch_size)) for name, spec in expected]
    if declared != wanted:
        raise UserError("{}: the config declares {} but the bundle's tail takes and gives {}".format(
            entry_dir, declared, wanted))
    if config.parameters["bundle_id"].string_value != manifest.bundle_id:
        raise UserError("{}: the config names bundle {}, not {}".format(
            entry_dir, config.parameters["bundle_id"].string_value, manifest.bundle_id))
    if platform == "onnxruntime":
        _check_onnx(os.path.join(version, "model.onnx"), expected)
    elif platform == "pytorch":
        _check_torchscript(os.path.join(version, "model.pt"))
    else:
        _check_copies(version, manifest, sha256)


def _check_onnx(path, expected):
    """The ONNX file's one input and one output, as onnxruntime reads them, against the config's tensors."""
    from runtime.backends.ort import cpu_session
    session = cpu_session(path)
    found = [(t.name, t.type, t.shape) for t in list(session.get_inputs()) + list(session.get_outputs())]
    if len(found) != 2:
        raise UserError("{} has {} inputs and outputs; a tail has one of each".format(path, len(found)))
    for (name, spec), (got_name, got_type, got_shape) in zip(expected, found):
        # the exported batch dimension is symbolic (a name, or None): Triton's -1
        shape = [-1 if not isinstance(d, int) else d for d in got_shape]
        want = [-1] + list(spec["shape"][1:])
        if got_name != name or got_type != ONNX_TYPES[spec["dtype"]] or shape != want:
            raise UserError("{}: tensor {} {} {} does not match the config's {} {} {}".format(
                path, got_name, got_type, shape, name, ONNX_TYPES[spec["dtype"]], want))


def _check_torchscript(path):
    """A TorchScript tail is a module whose forward takes one tensor (Triton binds it to INPUT__0)."""
    try:
        import torch
    except ImportError:
        return  # the file's sha256 was checked against the manifest; its signature needs torch to read
    forward = torch.jit.load(path, map_location="cpu").forward
    arguments = [a for a in forward.schema.arguments if a.name != "self"]
    if len(arguments) != 1:
        raise UserError("{}: forward takes {} arguments; Triton's INPUT__0 needs exactly one".format(
            path, len(arguments)))


def _check_copies(version, manifest, sha256):
    """The python entry's tail files and manifest are the bundle's, byte for byte."""
    copies = [(entry["file"], entry["sha256"]) for entry in manifest.part("tail")["files"].values()]
    for name, digest in copies + [(MANIFEST_NAME, sha256)]:
        if sha256_file(os.path.join(version, name)) != digest:
            raise UserError("{}: the copy of {} differs from the bundle's".format(version, name))
