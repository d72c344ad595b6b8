"""``push --triton-repo``: a bundle into a Triton fleet's model repository, loaded by its servers, and the
fleet's active bundle, kept in the repository.

Where the active bundle lives.  A fleet of Triton servers shares one model
repository (a volume, NFS, an object store) and no process's memory, so the
active bundle of a model is an entry of that repository: ``<model id>-active``, a
python-backend model whose config's ``parameters`` name the bundle (``bundle_id``)
and where its tail is served (``entry``, ``version``, ``split``).  Edges read that
config (the model-config API, through any balancer) and follow it.

A push, in order:

1. The bundle's tail becomes the next version of the entry ``<model id>-s<split>``
   (export-triton, atomic); the entry keeps its previous version beside it and
   Triton serves both (``version_policy: latest 2``), each version's bundle named
   in the parameters (``bundle_id.vN``), so an edge still running the previous
   head is answered by the previous tail until it switches.  Pushing the bundle
   that is already the entry's newest adds nothing.
2. Each server given (``--triton URL``, repeatable) is asked to load the entry
   (``--model-control-mode explicit``; a loaded model is reloaded, serving the old
   version until the new one is ready).
3. With ``--activate``, and only once every server has the tail, the pointer
   entry is rewritten (atomic) and loaded on each server.  Edges that follow it
   switch at their next batch boundary (``edge/kserve.py``).

A server that cannot load it stops the push with one line naming the server; what
was written stays in the repository (push again, or load it by hand).
"""
import os
import shutil

from runtime.bundle.manifest import ManifestError, load_manifest
from runtime.bundle.staging import install_dir, staged
from runtime.cloud.triton import TritonOptions, _pb2, export_triton, read_config, versions
from runtime.errors import UserError

POINTER_SUFFIX = "-active"
POINTER_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "triton_pointer.py")


def pointer_name(model_id):
    return model_id + POINTER_SUFFIX


def entry_name(model_id, split):
    return "{}-s{}".format(model_id, split)


def push_to_triton(bundle, repo, servers=(), activate=False, options=None, timeout=120.0):
    """Steps 1-3 of the module's docstring; returns {"entry", "version", "added", "activated", "loaded"}."""
    try:
        manifest = load_manifest(bundle)
    except ManifestError as exc:
        raise UserError(str(exc))
    o = options or TritonOptions(platform="python")
    name = entry_name(manifest.model_id, manifest.split_index)
    entry = os.path.join(repo, name)
    have = versions(entry)
    version, added = int(have[-1]) if have else 0, False
    if not have or read_config(entry).parameters["bundle_id"].string_value != manifest.bundle_id:
        version, added = version + 1, True
        export_triton(bundle, o.replace(repo=repo, name=name, version=version, carry_versions=True))
    clients = [_client(url, timeout) for url in servers]
    for url, client in zip(servers, clients):
        _load(url, client, name)
    if activate:
        write_pointer(repo, manifest, name, version)
        for url, client in zip(servers, clients):
            _load(url, client, pointer_name(manifest.model_id))
    return {"entry": name, "version": version, "added": added, "activated": activate, "loaded": list(servers),
            "bundle_id": manifest.bundle_id}


def write_pointer(repo, manifest, entry, version):
    """The ``<model>-active`` entry naming this bundle (config + model.py), renamed into place whole."""
    pb2, text_format = _pb2()
    name = pointer_name(manifest.model_id)
    config = pb2.ModelConfig(name=name, backend="python", max_batch_size=0)
    config.input.add(name="QUERY", data_type=pb2.TYPE_UINT8, dims=[1])
    config.output.add(name="BUNDLE_ID", data_type=pb2.TYPE_STRING, dims=[1])
    config.instance_group.add(count=1, kind=pb2.ModelInstanceGroup.KIND_CPU)
    for key, value in (("bundle_id", manifest.bundle_id), ("entry", entry), ("version", str(version)),
                       ("split", str(manifest.split_index)), ("model_id", manifest.model_id)):
        config.parameters[key].string_value = value
    try:
        with staged(repo, "push") as tmp:
            os.makedirs(os.path.join(tmp, "1"))
            shutil.copyfile(POINTER_MODEL, os.path.join(tmp, "1", "model.py"))
            with open(os.path.join(tmp, "config.pbtxt"), "w") as f:
                f.write(text_format.MessageToString(config))
            read_config(tmp)  # parses back
            install_dir(tmp, os.path.join(repo, name))
    except OSError as exc:
        raise UserError("cannot write the active-bundle entry {} into {} ({})".format(name, repo,
                                                                                   exc.strerror or exc))


def _client(url, timeout):
    scheme, _, hostport = url.partition("://")
    try:
        if scheme == "grpc":
            import tritonclient.grpc as module
        elif scheme == "http":
            import tritonclient.http as module
        else:
            raise UserError("--triton {}: give grpc://HOST:PORT or http://HOST:PORT".format(url))
    except (ImportError, RuntimeError) as exc:
        raise UserError("--triton needs tritonclient ({}); install the triton extra".format(exc))
    kw = {"network_timeout": timeout, "connection_timeout": timeout} if scheme == "http" else {}
    return module.InferenceServerClient(hostport, **kw)


def _load(url, client, name):
    from tritonclient.utils import InferenceServerException
    try:
        client.load_model(name)
    except (InferenceServerException, OSError) as exc:
        said = (str(exc).splitlines() or [""])[0]
        raise UserError("Triton at {} could not load {} ({}); the repository holds it: start that server with "
                        "--model-control-mode explicit, then push again".format(url, name, said))
