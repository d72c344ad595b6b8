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

``--input-dtype float16`` (for a float32 boundary) makes the tail take what ``run-edge
--compress fp16`` sends: the config's input becomes ``TYPE_FP16`` (``input_dtype`` in its
``parameters``) and the cast to float32 is compiled in: a rewritten ``model.onnx`` whose
float16 input feeds a Cast, a scripted ``model.pt`` wrapping the tail, or ``model.py``
casting the numpy arrays.  The bundle's own files are never modified.

Before anything is installed, the written config is parsed back from its text and
checked against the model file: an ONNX file's input and output names, dtypes and
dims as onnxruntime reads them, a TorchScript file's one-tensor forward, the
python entry's copied files against their sha256.  The entry is written in a
temporary directory beside it and renamed into place (``bundle.staging``): a bad
config or a failed copy leaves the repository as it was.
"""
import os
import shutil
import warnings

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
INPUT_DTYPES = ("float32", "float16")  # --input-dtype: the boundary's float32, or float16 cast to it in the tail
ONNX_ELEM_TYPES = {"float32": "FLOAT", "float16": "FLOAT16"}  # onnx.TensorProto's names, for the input's cast
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
    carry_versions = False      # keep the entry's other versions (push --triton-repo: edges on them finish there)
    input_dtype = None          # the input Triton takes: float16 casts to the boundary's float32 (default: the boundary's)


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


def model_config(manifest, options, sha256, older=None):
    """Triton's ModelConfig message for the bundle's tail (nothing written).  ``older``: {version: bundle id} of
    the versions carried over, named in the parameters as ``bundle_id.vN`` beside this one's; Triton then serves
    the two newest, so edges still on the previous bundle are answered by it until they switch."""
    pb2, _ = _pb2()
    o = options
    backend, _, _ = PLATFORMS[o.platform]
    config = pb2.ModelConfig(name=o.name, max_batch_size=o.max_batch)
    if o.platform == "python":
        config.backend = backend
    else:
        config.platform = backend
    in_name, out_name = tensor_names(o.platform, manifest)
    in_dtype = o.input_dtype or manifest["boundary"]["dtype"]
    for repeated, name, spec, dtype in ((config.input, in_name, manifest["boundary"], in_dtype),
                                        (config.output, out_name, manifest["output"], manifest["output"]["dtype"])):
        tensor = repeated.add(name=name, data_type=pb2.DataType.Value(DATA_TYPES[dtype]))
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
    if in_dtype != manifest["boundary"]["dtype"]:  # a cast is compiled in: say so (model.py reads it)
        parameters["input_dtype"] = in_dtype
    if older is not None:
        versions = dict(older, **{str(o.version): manifest.bundle_id})
        parameters.update(("bundle_id.v{}".format(v), b) for v, b in versions.items())
        config.version_policy.latest.num_versions = 2
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
    if len(manifest.boundaries) > 1 or len(manifest.outputs) > 1:
        raise UserError("bundle {} (split {}) passes {} tensors and returns {}; a Triton entry from this tool takes "
                        "one and returns one so far: serve it with serve-cloud, or export a single-tensor split "
                        "for Triton (`cli.py layers`)".format(manifest.directory, manifest.split_index,
                                                              len(manifest.boundaries), len(manifest.outputs)))
    if o.tensorrt and o.platform != "onnxruntime":
        raise UserError("--tensorrt is an onnxruntime accelerator; use it with --platform onnxruntime")
    if o.max_batch < 0 or o.instances < 1 or o.version < 1 or o.max_queue_delay_us < 0:
        raise UserError("--max-batch and --max-delay-us must be 0 or more, --instances and --version 1 or "
                        "more")
    if any(b < 1 or (o.max_batch and b > o.max_batch) for b in o.preferred_batch):
        raise UserError("--preferred-batch sizes must lie in 1..--max-batch ({})".format(o.max_batch))
    fmt = PLATFORMS[o.platform][1]
    formats = manifest.part("tail")["files"]
    if fmt is not None and fmt not in formats:
        raise UserError("bundle {} has no {} tail for --platform {}; re-export it with --formats {}".format(
            manifest.directory, fmt, o.platform, fmt))
    check_input_dtype(manifest, o.input_dtype)


def check_input_dtype(manifest, input_dtype):
    """--input-dtype: the boundary's own dtype, or float16 cast in the tail to a float32 boundary."""
    if input_dtype is None:
        return
    if input_dtype not in INPUT_DTYPES:
        raise UserError("unknown --input-dtype {!r}; choose float32 or float16".format(input_dtype))
    boundary = manifest["boundary"]["dtype"]
    if input_dtype != boundary and not (input_dtype == "float16" and boundary == "float32"):
        raise UserError("--input-dtype {} does not fit bundle {}'s {} boundary: a tail takes its boundary's dtype, "
                        "or float16 cast to a float32 boundary".format(input_dtype, manifest.directory, boundary))


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
    if o.input_dtype is None:
        o = o.replace(input_dtype=manifest["boundary"]["dtype"])
    _, text_format = _pb2()
    sha256 = manifest_sha256(bundle_dir)
    entry = os.path.join(o.repo, o.name)
    older = older_versions(entry, o.version) if o.carry_versions else None
    text = text_format.MessageToString(model_config(manifest, o, sha256, older))
    try:
        with staged(o.repo, "export") as tmp:
            for v in older or ():
                shutil.copytree(os.path.join(entry, v), os.path.join(tmp, v))
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


def versions(entry_dir):
    """The version numbers (as directory names) of a repository entry, oldest first ([] if it does not exist)."""
    if not os.path.isdir(entry_dir):
        return []
    return sorted((d for d in os.listdir(entry_dir) if d.isdigit()), key=int)


def older_versions(entry_dir, new_version):
    """{version: bundle id} of the version to keep beside ``new_version`` (the newest other one; Triton serves
    two), from the entry's config ({} if the entry has none)."""
    found = [v for v in versions(entry_dir) if v != str(new_version)]
    if not found:
        return {}
    params = read_config(entry_dir).parameters
    key = "bundle_id.v{}".format(found[-1])
    return {found[-1]: params[key].string_value if key in params else params["bundle_id"].string_value}


def _write_model(manifest, o, version):
    _, fmt, file_name = PLATFORMS[o.platform]
    tail = manifest.part("tail")["files"]
    cast = o.input_dtype != manifest["boundary"]["dtype"]
    if fmt == "onnx" and cast:
        _write_onnx_cast(manifest.file_path("tail", fmt), os.path.join(version, file_name), manifest["boundary"])
        return
    if fmt == "torchscript" and cast:
        _write_torchscript_cast(manifest.file_path("tail", fmt), os.path.join(version, file_name))
        return
    if fmt is not None:
        shutil.copyfile(manifest.file_path("tail", fmt), os.path.join(version, file_name))
        return
    shutil.copyfile(PYTHON_MODEL, os.path.join(version, file_name))
    shutil.copyfile(os.path.join(manifest.directory, MANIFEST_NAME), os.path.join(version, MANIFEST_NAME))
    for entry in tail.values():
        shutil.copyfile(os.path.join(manifest.directory, entry["file"]), os.path.join(version, entry["file"]))


def _write_onnx_cast(src, dst, boundary):
    """``src`` (never modified) rewritten into ``dst``: the boundary input is float16 and a Cast to the boundary's
    dtype feeds its consumers.  A tail with external data keeps it external, in one ``model.onnx.data`` beside."""
    try:
        import onnx
        from onnx import external_data_helper
    except ImportError as exc:
        raise UserError("--input-dtype float16 with --platform onnxruntime needs the onnx package ({})".format(exc))
    model = onnx.load(src, load_external_data=False)
    external = any(external_data_helper.uses_external_data(t) for t in model.graph.initializer)
    if external:
        external_data_helper.load_external_data_for_model(model, os.path.dirname(os.path.abspath(src)))
    _cast_graph_input(onnx, model.graph, boundary["name"], onnx.TensorProto.FLOAT16,
                      getattr(onnx.TensorProto, ONNX_ELEM_TYPES[boundary["dtype"]]))
    try:
        if external:
            onnx.save_model(model, dst, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=os.path.basename(dst) + ".data")
            onnx.checker.check_model(dst)
        else:
            onnx.checker.check_model(model)
            onnx.save(model, dst)
    except onnx.checker.ValidationError as exc:
        raise UserError("{}: the tail with a float16 input is not valid ONNX ({})".format(
            src, (str(exc).splitlines() or [""])[0][:300]))


def _cast_graph_input(onnx, graph, name, new_type, old_type):
    """Make graph input ``name`` of type ``new_type``, cast back to ``old_type`` for every node that read it."""
    inputs = [i for i in graph.input if i.name == name]
    if len(inputs) != 1:
        raise UserError("the tail's ONNX graph has no input {!r} (it has {})".format(
            name, ", ".join(i.name for i in graph.input)))
    if name in {v.name for v in graph.output}:
        raise UserError("the tail's ONNX graph gives its input {!r} as an output".format(name))
    taken = {v for node in graph.node for v in list(node.input) + list(node.output)}
    taken |= {v.name for v in list(graph.input) + list(graph.initializer) + list(graph.value_info)}
    cast_name = name + "_cast"
    while cast_name in taken:
        cast_name += "_"
    _rename_uses(graph, name, cast_name)
    inputs[0].type.tensor_type.elem_type = new_type
    graph.node.insert(0, onnx.helper.make_node("Cast", [name], [cast_name], to=old_type, name=cast_name))


def _rename_uses(graph, old, new):
    """Every node input ``old`` of the graph, and of its subgraphs (If, Loop, Scan bodies), becomes ``new``."""
    for node in graph.node:
        node.input[:] = [new if v == old else v for v in node.input]
        for attribute in node.attribute:
            for subgraph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                _rename_uses(subgraph, old, new)


def _torch(why):
    try:
        import torch
    except ImportError as exc:
        raise UserError("{} needs torch ({}); install it (pip install torch) or use --platform onnxruntime".format(
            why, exc))
    return torch


def _write_torchscript_cast(src, dst):
    """A scripted module that takes float16, casts it to float32 and runs the tail of ``src`` (never modified)."""
    torch = _torch("--input-dtype float16 with --platform pytorch")

    class CastInput(torch.nn.Module):
        def __init__(self, tail):
            super().__init__()
            self.tail = tail

        def forward(self, x):
            return self.tail(x.float())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.x deprecates TorchScript; Triton's libtorch needs it
        torch.jit.script(CastInput(torch.jit.load(src, map_location="cpu"))).save(dst)


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
    in_dtype = manifest["boundary"]["dtype"]
    if "input_dtype" in config.parameters:
        in_dtype = config.parameters["input_dtype"].string_value
    check_input_dtype(manifest, in_dtype)
    expected = [(in_name, manifest["boundary"], in_dtype), (out_name, manifest["output"], manifest["output"]["dtype"])]
    declared = [(t.name, pb2.DataType.Name(t.data_type), list(t.dims)) for t in list(config.input) + list(config.output)]
    wanted = [(name, DATA_TYPES[dtype], dims(spec, config.max_batch_size)) for name, spec, dtype in expected]
    if declared != wanted:
        raise UserError("{}: the config declares {} but the bundle's tail takes and gives {}".format(
            entry_dir, declared, wanted))
    if config.parameters["bundle_id"].string_value != manifest.bundle_id:
        raise UserError("{}: the config names bundle {}, not {}".format(
            entry_dir, config.parameters["bundle_id"].string_value, manifest.bundle_id))
    if platform == "onnxruntime":
        _check_onnx(os.path.join(version, "model.onnx"), expected)
    elif platform == "pytorch":
        _check_torchscript(os.path.join(version, "model.pt"), manifest, in_dtype)
    else:
        _check_copies(version, manifest, sha256)


def _check_onnx(path, expected):
    """The ONNX file's one input and one output, as onnxruntime reads them, against the config's tensors."""
    from runtime.backends.ort import cpu_session
    session = cpu_session(path)
    found = [(t.name, t.type, t.shape) for t in list(session.get_inputs()) + list(session.get_outputs())]
    if len(found) != 2:
        raise UserError("{} has {} inputs and outputs; a tail has one of each".format(path, len(found)))
    for (name, spec, dtype), (got_name, got_type, got_shape) in zip(expected, found):
        # the exported batch dimension is symbolic (a name, or None): Triton's -1
        shape = [-1 if not isinstance(d, int) else d for d in got_shape]
        want = [-1] + list(spec["shape"][1:])
        if got_name != name or got_type != ONNX_TYPES[dtype] or shape != want:
            raise UserError("{}: tensor {} {} {} does not match the config's {} {} {}".format(
                path, got_name, got_type, shape, name, ONNX_TYPES[dtype], want))


def _check_torchscript(path, manifest, input_dtype):
    """A TorchScript tail is a module whose forward takes one tensor (Triton binds it to INPUT__0); one with a cast
    compiled in is also run once, on zeros of the config's dtype, and must give the manifest's output shape."""
    try:
        import torch
    except ImportError:
        return  # the file's sha256 was checked against the manifest; its signature needs torch to read
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(path, map_location="cpu")
    arguments = [a for a in module.forward.schema.arguments if a.name != "self"]
    if len(arguments) != 1:
        raise UserError("{}: forward takes {} arguments; Triton's INPUT__0 needs exactly one".format(
            path, len(arguments)))
    if input_dtype != manifest["boundary"]["dtype"]:
        _run_torchscript_once(torch, module, path, manifest, input_dtype)


def _run_torchscript_once(torch, module, path, manifest, input_dtype):
    shape = [1] + list(manifest["boundary"]["shape"][1:])
    want = [1] + list(manifest["output"]["shape"][1:])
    try:
        with torch.no_grad():
            out = module(torch.zeros(shape, dtype=getattr(torch, input_dtype)))
    except RuntimeError as exc:
        raise UserError("{}: forward on {} zeros of shape {} failed ({})".format(
            path, input_dtype, shape, (str(exc).splitlines() or [""])[0][:300]))
    got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if got != want or (isinstance(out, torch.Tensor) and out.dtype != getattr(torch, manifest["output"]["dtype"])):
        raise UserError("{}: forward on {} zeros of shape {} gives {} {}, not the manifest's {} {}".format(
            path, input_dtype, shape, getattr(out, "dtype", ""), got, manifest["output"]["dtype"], want))


def _check_copies(version, manifest, sha256):
    """The python entry's tail files and manifest are the bundle's, byte for byte."""
    copies = [(entry["file"], entry["sha256"]) for entry in manifest.part("tail")["files"].values()]
    for name, digest in copies + [(MANIFEST_NAME, sha256)]:
        if sha256_file(os.path.join(version, name)) != digest:
            raise UserError("{}: the copy of {} differs from the bundle's".format(version, name))
