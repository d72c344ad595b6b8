"""`--model` on the edge's commands (issue 19, point 5): the spec `export` takes (torchvision:NAME,
package.module:function) and the bundles' id give the same run; an unknown model is one line listing the models
held, not the one asked; without --model, the one model held, said on stderr, and a refusal listing them where
several are held.  Real serve-cloud and cli.py processes on the tiny model (tests/fixtures/tiny_models.py)."""
import json
import shutil

import pytest
from cloud_server import ServerProcess
from conftest import TINY, TINY_ID, run_cli, tiny_bundle

from runtime.bundle.schema import model_id

OTHER, OTHER_ID = "tiny_models:build", "tiny_models-build"  # a second model, for stores that hold two


def test_one_rule_turns_a_spec_into_its_model_id():
    assert model_id("resnet50") == "resnet50"
    assert model_id("torchvision:mobilenet_v3_small") == "torchvision-mobilenet_v3_small"
    assert model_id("package.module:function") == "package-module-function"
    assert model_id("torchvision-mobilenet_v3_small") == "torchvision-mobilenet_v3_small"  # an id stays
    from exporter.models.configs import resolve
    assert resolve(TINY).model_id == model_id(TINY) == TINY_ID  # the exporter names its bundles by the same rule
    assert resolve("resnet50").model_id == "resnet50"


@pytest.fixture(scope="module")
def server(tiny_bundles):
    """A cloud that holds one model: the tiny one, every split and its segments."""
    srv = ServerProcess(tiny_bundles)
    yield srv
    assert srv.stop() == 0, srv.log_text()


@pytest.fixture(scope="module")
def two_models(tiny_bundles, tmp_path_factory):
    """A store of two models: the tiny one at split 4, tiny_models:build at split 1."""
    from exporter.bundle import export_bundle
    from exporter.options import ExportOptions
    root = tmp_path_factory.mktemp("two-models")
    shutil.copytree(str(tiny_bundle(tiny_bundles, 4)), str(root / (TINY_ID + "-s4")))
    export_bundle(OTHER, "1", ExportOptions(random_init=True, out_dir=str(root), formats=["onnx"]))
    return root


def run_edge(srv, cache, *args):
    return run_cli("run-edge", "--cloud", srv.address, "--cache", cache, "--dataset", "synthetic", "--limit", 4,
                   "--warmup", 0, *args, timeout=300)


def one_line_error(proc):
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_the_spec_and_the_id_give_the_same_run(server, tiny_labelled_npz, tmp_path):
    reports = []
    for i, given in enumerate((TINY, TINY_ID)):
        report = tmp_path / "r{}.json".format(i)
        proc = run_edge(server, tmp_path / "cache", "--model", given, "--split", 4, "--dataset",
                        "npz:" + tiny_labelled_npz[0], "--limit", 16, "--report", report)
        assert proc.returncode == 0, proc.stderr
        reports.append(json.loads(report.read_text()))
    first, second = reports
    assert first["model"] == second["model"] == TINY_ID and first["bundle_id"] == second["bundle_id"]
    assert first["predictions"] == second["predictions"] == tiny_labelled_npz[1][:16].tolist()
    assert len(first["fetches"]) == 1 and second["fetches"] == []  # the second found the first's head: same bundles


def test_plan_takes_either_form_too(server, tmp_path):
    plans = []
    for given in (TINY, TINY_ID):
        proc = run_cli("plan", "--cloud", server.address, "--model", given, "--cache", tmp_path, "--bandwidth", 100,
                       "--rtt", 1, "--json", timeout=300)
        assert proc.returncode == 0, proc.stderr
        plans.append(json.loads(proc.stdout))
    assert plans[0] == plans[1]  # the second plan used the profile the first measured: the same segments bundle
    assert "profiling" not in proc.stderr


def test_an_unknown_model_lists_the_models_held_and_not_the_one_asked(server, tiny_bundles, tmp_path):
    asked = "torchvision:resnet18"
    for command in (("run-edge", "--split", 4), ("run-edge",), ("plan", "--bandwidth", 100, "--rtt", 1),
                    ("sweep", "--splits", 4, "--power", "none")):
        extra = ("--dataset", "synthetic", "--limit", 2) if command[0] in ("run-edge", "sweep") else ()
        proc = run_cli(command[0], "--cloud", server.address, "--cache", tmp_path, "--model", asked, *command[1:],
                       *extra, timeout=300)
        line = one_line_error(proc)
        said, held = line.split("; they hold ")
        assert asked in said and "torchvision-resnet18" in said, line  # what was asked, in both forms
        assert held.startswith("{} (cloud)".format(TINY_ID)) and "resnet18" not in held, line
    # the id form of a model the cache holds but the cloud does not: listed as the cache's
    shutil.copytree(str(tiny_bundle(tiny_bundles, 2)), str(tmp_path / "cache" / (TINY_ID + "-s2")))
    line = one_line_error(run_edge(server, tmp_path / "cache", "--model", "torchvision-resnet18", "--split", 4))
    assert "torchvision-resnet18 (spec torchvision:resnet18)" in line
    assert "they hold {} (cache, cloud)".format(TINY_ID) in line


def test_without_model_the_only_model_held_is_used_and_said(server, tmp_path):
    report = tmp_path / "r.json"
    proc = run_edge(server, tmp_path / "cache", "--split", 4, "--report", report)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(report.read_text())["model"] == TINY_ID
    said = [l for l in proc.stderr.splitlines() if l.startswith("run-edge: model ")]
    assert len(said) == 1 and said[0].startswith("run-edge: model {} (no --model given: the only model".format(
        TINY_ID)), \
        proc.stderr
    proc = run_cli("profile", "--cloud", server.address, "--cache", tmp_path / "cache", "--out", tmp_path / "p.json",
                   "--power", "none", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "profile: model {}".format(TINY_ID) in proc.stderr and "profile of {}".format(TINY_ID) in proc.stdout


def test_without_model_several_models_held_are_a_refusal_that_lists_them(two_models, server, tmp_path):
    srv = ServerProcess(two_models)
    try:
        line = one_line_error(run_edge(srv, tmp_path / "empty", "--split", 1))  # the cloud holds two
        assert "no --model given" in line and "pass one of them with --model" in line
        assert "{} (cloud), {} (cloud)".format(OTHER_ID, TINY_ID) in line, line
        proc = run_edge(srv, tmp_path / "empty", "--model", OTHER, "--split", 1)  # naming one is enough
        assert proc.returncode == 0, proc.stderr
    finally:
        assert srv.stop() == 0, srv.log_text()
    # the cache and the cloud each hold one model, not the same: two in all
    shutil.copytree(str(two_models / (OTHER_ID + "-s1")), str(tmp_path / "cache" / (OTHER_ID + "-s1")))
    line = one_line_error(run_edge(server, tmp_path / "cache", "--split", 4))
    assert "{} (cache), {} (cloud)".format(OTHER_ID, TINY_ID) in line, line


def test_without_model_and_nothing_held_it_is_resnet50_as_before(tmp_path):
    (tmp_path / "store").mkdir()
    srv = ServerProcess(str(tmp_path / "store"))
    try:
        proc = run_edge(srv, tmp_path / "cache", "--split", 20)
    finally:
        assert srv.stop() == 0, srv.log_text()
    assert proc.returncode != 0 and "run-edge: model resnet50 (no --model given: the default" in proc.stderr
    assert "holds no bundle for resnet50 split 20" in proc.stderr, proc.stderr


def test_without_model_the_model_exported_on_demand_is_used(tmp_path):
    """An empty store behind `serve-cloud --model tiny_models:classifier`: STATUS's `models` names the model it
    exports on demand, the edge takes it, and the split is exported at its HELLO."""
    (tmp_path / "store").mkdir()
    srv = ServerProcess(str(tmp_path / "store"), "--model", TINY, "--random-init")
    try:
        status = run_cli("status", "--cloud", srv.address)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["models"] == {TINY_ID: {"splits": [], "on_demand": True}}
        report = tmp_path / "r.json"
        proc = run_edge(srv, tmp_path / "cache", "--split", 3, "--report", report)
        assert proc.returncode == 0, proc.stderr
        assert "run-edge: model {} (no --model given: the only model".format(TINY_ID) in proc.stderr
        assert json.loads(report.read_text())["model"] == TINY_ID
        assert json.loads(run_cli("status", "--cloud", srv.address).stdout)["models"][TINY_ID]["splits"] == [3]
    finally:
        assert srv.stop() == 0, srv.log_text()
