"""demo: the whole workflow on one machine, with nothing to download.

It scripts what a user does: ``cli.py export`` (only when the bundle is missing or
was made from other weights), ``cli.py serve-cloud`` on a free local port in a
subprocess, then ``run-edge`` against it, then SIGTERM to the server.
Python 3.6 syntax; it imports no exporter code (export runs as a subprocess).
"""
import json
import os
import subprocess

from runtime import launch
from runtime.bundle.manifest import ManifestError, bundle_dir_name, load_manifest, sha256_file
from runtime.bundle.schema import parse_split, resolve_split
from runtime.errors import UserError
from runtime.launch import cli_command

DEFAULT_WEIGHTS = os.path.join("weights", "resnet50-best.pth")


def _bundle_is_current(directory, weights):
    try:
        manifest = load_manifest(directory)
        manifest.verify_files()
    except ManifestError:
        return False
    recorded = manifest["model"]["weights"]
    if weights is None:
        return bool(recorded["random_init"])
    return recorded["sha256"] == sha256_file(weights)


def ensure_bundle(split, weights, artifacts):
    directory = os.path.join(artifacts, bundle_dir_name("resnet50", split))
    if _bundle_is_current(directory, weights):
        print("demo: using {} ({})".format(directory, "random weights" if weights is None else weights))
        return
    args = ["export", "--split", split, "--store", artifacts]
    args += ["--weights", weights] if weights else ["--random-init"]
    print("demo: exporting the seed's ResNet-50 at split {} ({})".format(
        split, "RANDOM weights: accuracy will be at chance level" if weights is None else weights), flush=True)
    if subprocess.call(cli_command(*args)) != 0:
        raise UserError("demo: the export failed (see above)")


def split_index(split):
    """The demo's ``--split`` as ``parse_split`` gives it: a name is looked up among the seed's points, as
    ``cli.py layers --json`` lists them, by the rule export uses (``schema.resolve_split``)."""
    try:
        return parse_split(split)
    except ValueError:
        pass
    proc = subprocess.run(cli_command("layers", "--model", "resnet50", "--json"), stdout=subprocess.PIPE,
                          universal_newlines=True)
    if proc.returncode != 0:
        raise UserError("demo: `cli.py layers` failed (see above), so --split {} cannot be looked up; give its "
                        "index".format(split))
    return resolve_split(split, json.loads(proc.stdout)["points"])


def run_demo(split="20", weights=None, dataset=None, artifacts="artifacts", data_dir="data", limit=100,
             backend="onnx"):
    from runtime.edge.data import check_source
    from runtime.edge.options import RunOptions
    from runtime.edge.run import run_edge
    if dataset is not None:
        check_source(dataset, data_dir)  # before the export and the server, which take a while
    if weights is None and os.path.isfile(DEFAULT_WEIGHTS):
        weights = DEFAULT_WEIGHTS
    if weights is not None and not os.path.isfile(weights):
        raise UserError("weights file {} not found".format(weights))
    if weights is None:
        print("demo: no {} here, so the model gets RANDOM weights (accuracy at chance level)".format(DEFAULT_WEIGHTS))
    split = split_index(str(split))
    ensure_bundle(str(split), weights, artifacts)
    if dataset is None:
        present = os.path.isfile(os.path.join(data_dir, "cifar-100-binary", "test.bin")) or os.path.isfile(
            os.path.join(data_dir, "cifar-100-binary.tar.gz"))
        dataset = "cifar100" if present else "synthetic"
        print("demo: dataset {}{}".format(dataset, "" if present else " (CIFAR-100 not in {}/)".format(data_dir)))
    server = launch.serve_cloud("--host", "127.0.0.1", "--port", 0, "--store", artifacts, "--backend", backend,
                                log="inherit")
    print("demo: serve-cloud is up at {}; running the edge".format(server.address), flush=True)
    try:
        return run_edge(RunOptions(cloud=server.address, model="resnet50", split=split, cache=artifacts,
                                   backend=backend, dataset=dataset, data_dir=data_dir, limit=limit))
    finally:
        server.stop(30)
