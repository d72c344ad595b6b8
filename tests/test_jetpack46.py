"""The JetPack 4.6 tier: real ``run-edge`` processes on the Jetson's own software stack (Python 3.6,
onnxruntime 1.10, numpy 1.19, click 8.0, zstandard/lz4 and tritonclient 2.41.1's last 3.6 releases), run from
this checkout with no install, against ``serve-cloud`` (and a Triton server) on the cloud's Python.

``make jp46-env`` (run by ``make test``) makes that environment once, in ``.venv-jp46``, from pyenv's Python
3.6.15; ``EDGESPLIT_JP46_ENV`` names another (``make test-torch110`` points it at one with torch 1.10).  Where it
could not be made (no Python 3.6, or pip offline), the tier skips with the reason the Makefile wrote down.

Where the cloud's own edge gives the answer to compare with (compression, pipelining), the same run is made on
both interpreters and must agree sample for sample and byte for byte: the edge behaves the same on the Jetson's
stack as on the cloud's.  Elsewhere the answer is the labels, which the tests' own torch copy of each model made.
"""
import json
import os
import subprocess
import sys
import time

import pytest
from cloud_server import ServerProcess
from conftest import REPO, TINY_ID, run_cli, tiny_bundle

ENV = os.path.join(REPO, os.environ.get("EDGESPLIT_JP46_ENV", ".venv-jp46"))
PY36 = os.path.join(ENV, "bin", "python")
TOKEN = "jetson-token-0123456789"


def _unavailable():
    said = os.path.join(ENV, "UNAVAILABLE")
    if os.path.exists(said):
        with open(said) as f:
            return "the JetPack 4.6 environment could not be made ({})".format(f.read().strip())
    if not os.path.exists(PY36):
        return "no JetPack 4.6 environment at {} (make jp46-env makes it)".format(os.path.relpath(ENV, REPO))
    return None


REASON = _unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


def edge_env():
    """The edge's environment: nothing of the cloud's packages or the tests' fixtures on its path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def edge_argv(python, *args):
    return [python, os.path.join(REPO, "cli.py"), "run-edge"] + [str(a) for a in args]


def run_edge36(*args, python=PY36, timeout=600):
    return subprocess.run(edge_argv(python, *args), cwd=REPO, env=edge_env(), capture_output=True,
                          universal_newlines=True, timeout=timeout)


def start_edge36(*args):
    return subprocess.Popen(edge_argv(PY36, *args), cwd=REPO, env=edge_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True)


def wait_for_hello(srv, timeout=120):
    """Until the server has logged an edge's hello (the run is under way), or ``timeout`` s."""
    deadline = time.time() + timeout
    while not any("event=hello" in l for l in srv.log) and time.time() < deadline:
        time.sleep(0.05)


def report_of(proc, path):
    assert proc.returncode == 0, proc.stderr
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def tiny_server(tiny_bundles):
    srv = ServerProcess(tiny_bundles)
    yield srv
    assert srv.stop() == 0, srv.log_text()


def test_the_tier_runs_the_jetpack_4_6_versions():
    code = ("import json, platform, numpy, onnxruntime, click, zstandard, lz4, tritonclient.grpc, grpc; "
            "print(json.dumps([platform.python_version(), numpy.__version__, onnxruntime.__version__, "
            "click.__version__, grpc.__version__]))")
    done = subprocess.run([PY36, "-W", "ignore", "-c", code], env=edge_env(), stdout=subprocess.PIPE,
                          universal_newlines=True, check=True)
    python, numpy, ort, click, grpc = json.loads(done.stdout)
    assert python.startswith("3.6.") and numpy.startswith("1.19.") and ort == "1.10.0", done.stdout
    assert click.startswith("8.0.") and grpc == "1.48.2", done.stdout


@pytest.mark.parametrize("split", [0, 3, 20, 22])
def test_the_seed_report_from_an_empty_cache_with_the_unsplit_models_predictions(split, seed_bundles, labelled_npz,
                                                                                  tmp_path):
    """The seed's ResNet-50: the edge starts with nothing, fetches and verifies the head, and prints the seed's
    four lines first; every prediction is the unsplit model's."""
    srv = ServerProcess(seed_bundles[0])
    report = tmp_path / "r.json"
    try:
        proc = run_edge36("--cloud", srv.address, "--cache", tmp_path / "cache", "--split", split, "--dataset",
                          "npz:" + labelled_npz[0], "--limit", 40, "--batch-size", 4 if split == 3 else 1,
                          "--report", report)
    finally:
        assert srv.stop() == 0
    r = report_of(proc, report)
    assert r["predictions"] == labelled_npz[1][:40].tolist() and r["accuracy"] == 1.0
    lines = proc.stdout.splitlines()
    assert lines[0] == "Accuracy: 100.00%", proc.stdout
    assert [l.split(":")[0] for l in lines[1:4]] == ["Avg edge inference latency", "Avg transmission latency",
                                                     "Avg cloud inference latency"]
    assert [f["split"] for f in r["fetches"]] == [split]
    assert os.path.exists(str(tmp_path / "cache" / "resnet50-s{}".format(split) / "manifest.json"))


@pytest.mark.parametrize("compress,codec,inflight", [("none", "none", 4), ("fp16", "none", 1),
                                                     ("int8", "zstd", 4), ("int8", "lz4", 2)])
def test_compression_and_pipelining_give_what_the_clouds_own_edge_gives(compress, codec, inflight, tiny_server,
                                                                        tiny_bundles, tiny_labelled_npz, tmp_path):
    """numpy 1.19's fp16 and int8 encodings and the codecs' 3.6 releases: the same samples, the same predictions
    and the same bytes as the edge on the cloud's Python; uncompressed, exactly the labels."""
    runs = {}
    for name, python in (("3.6", PY36), ("cloud", sys.executable)):
        report = tmp_path / (name + ".json")
        proc = run_edge36("--cloud", tiny_server.address, "--artifacts", tiny_bundles, "--model", TINY_ID,
                          "--split", 4, "--compress", compress, "--codec", codec, "--inflight", inflight,
                          "--dataset", "npz:" + tiny_labelled_npz[0], "--limit", 120, "--report", report,
                          python=python)
        runs[name] = report_of(proc, report)
    edge, cloud = runs["3.6"], runs["cloud"]
    assert edge["predictions"] == cloud["predictions"] and edge["labels"] == cloud["labels"]
    assert edge["bytes_sent_per_sample"] == cloud["bytes_sent_per_sample"]
    assert edge["compress"] == compress and edge["codec"] == codec and edge["inflight"] == inflight
    if compress == "none":
        assert edge["predictions"] == tiny_labelled_npz[1][:120].tolist()


def test_tls_mutual_tls_and_the_token(tiny_bundles, tiny_labelled_npz, tmp_path):
    """Python 3.6's ssl module against the cloud's: a verified server, the edge's certificate and the token; an
    edge without its certificate, or with a wrong token, is refused in one line."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    files = {}
    for name, identities in (("server", ("127.0.0.1",)), ("client", ("jetson-1",))):
        cert = ca.issue_cert(*identities)
        files[name] = (str(tmp_path / (name + ".pem")), str(tmp_path / (name + ".key")))
        cert.cert_chain_pems[0].write_to_path(files[name][0])
        cert.private_key_pem.write_to_path(files[name][1])
    ca_file = str(tmp_path / "ca.pem")
    ca.cert_pem.write_to_path(ca_file)
    srv = ServerProcess(tiny_bundles, "--tls-cert", files["server"][0], "--tls-key", files["server"][1],
                        "--tls-client-ca", ca_file, "--token", TOKEN)
    common = ["--cloud", srv.address, "--artifacts", tiny_bundles, "--model", TINY_ID, "--split", 4, "--dataset",
              "npz:" + tiny_labelled_npz[0], "--limit", 30, "--reconnect-timeout", 0, "--tls-ca", ca_file]
    report = tmp_path / "r.json"
    try:
        good = run_edge36(*common + ["--tls-cert", files["client"][0], "--tls-key", files["client"][1],
                                     "--token", TOKEN, "--report", report])
        no_cert = run_edge36(*common + ["--token", TOKEN])
        wrong_token = run_edge36(*common + ["--tls-cert", files["client"][0], "--tls-key", files["client"][1],
                                            "--token", "guess"])
    finally:
        assert srv.stop() == 0
    assert report_of(good, report)["predictions"] == tiny_labelled_npz[1][:30].tolist()
    for refused in (no_cert, wrong_token):
        lines = refused.stderr.strip().splitlines()
        assert refused.returncode != 0 and lines[-1].startswith("error: ") and "Traceback" not in refused.stderr


def test_a_hot_swap_pushed_mid_run_loses_and_repeats_no_sample(tiny_bundles, tiny_labelled_npz, tmp_path):
    """follow: the 3.6 edge starts on split 4 from an empty cache, a push activates split 1, it switches."""
    srv = ServerProcess(tmp_path / "store", "--allow-push", "--admin-token", TOKEN)
    s4, s1 = tiny_bundle(tiny_bundles, 4), tiny_bundle(tiny_bundles, 1)
    data, labels = tiny_labelled_npz
    report = tmp_path / "r.json"
    try:
        for bundle, extra in ((s4, ["--activate"]), (s1, [])):
            assert run_cli("push", bundle, "--cloud", srv.address, "--admin-token", TOKEN, *extra).returncode == 0
        edge = start_edge36("--cloud", srv.address, "--cache", tmp_path / "cache", "--model", TINY_ID,
                            "--interval-ms", 20, "--dataset", "npz:" + data, "--limit", 300, "--report", report)
        wait_for_hello(srv)
        time.sleep(1.0)
        assert run_cli("push", s1, "--cloud", srv.address, "--admin-token", TOKEN, "--activate").returncode == 0
        out, err = edge.communicate(timeout=300)
    finally:
        assert srv.stop() == 0
    assert edge.returncode == 0, err
    r = json.loads(report.read_text())
    assert r["n"] == 300 and r["predictions"] == labels[:300].tolist()  # every sample once, correct
    assert [(s["from_split"], s["to_split"]) for s in r["switches"]] == [(4, 1)]
    assert [f["split"] for f in r["fetches"]] == [4, 1]
    assert "Switches: split 4 -> 1" in out


def test_split_auto_plans_from_the_edges_own_profile(tiny_server, tmp_path):
    report = tmp_path / "r.json"
    proc = run_edge36("--cloud", tiny_server.address, "--model", TINY_ID, "--cache", tmp_path / "cache", "--split",
                      "auto", "--bandwidth", "0.01", "--rtt", "5", "--dataset", "synthetic", "--limit", 5,
                      "--report", report)
    r = report_of(proc, report)
    assert r["plan"]["choice"]["split"] == r["split"] and "planned split" in proc.stderr


def test_adaptive_mode_moves_to_a_later_split_when_the_bandwidth_drops(seed_segments, labelled_npz, tmp_path):
    """As tests/test_planning.py's test of the same name, with the edge on Python 3.6."""
    from slow_proxy import SlowProxy
    srv = ServerProcess(seed_segments)
    proxy = SlowProxy(srv.host, srv.port)
    report = tmp_path / "r.json"
    data, labels = labelled_npz
    try:
        edge = start_edge36("--cloud", proxy.address, "--cache", tmp_path / "cache", "--split", 3, "--adaptive",
                            "--rtt", "0.3", "--bandwidth", "5000", "--dataset", "npz:" + data, "--limit", 300,
                            "--report", report)
        wait_for_hello(srv)
        time.sleep(1.5)
        proxy.rate = 32 * 1024  # 256 kbit/s: a late split wins whatever the profiles say
        out, err = edge.communicate(timeout=600)
    finally:
        proxy.close()
        assert srv.stop() == 0
    assert edge.returncode == 0, err
    r = json.loads(report.read_text())
    assert r["predictions"] == labels[:300].tolist() and r["n"] == 300
    switches = r["switches"]
    assert switches and switches[-1]["to_split"] in ["local"] + list(range(17, 23)), switches
    assert "bandwidth now" in switches[-1]["reason"] and switches[-1]["head"] in ("segment-chain", "whole model")


def test_fallback_local_finishes_on_the_edge_when_the_cloud_stays_down(tiny_bundles, tiny_labelled_npz, tmp_path):
    srv = ServerProcess(tiny_bundles)
    report = tmp_path / "r.json"
    data, labels = tiny_labelled_npz
    edge = start_edge36("--cloud", srv.address, "--artifacts", tiny_bundles, "--model", TINY_ID, "--split", 4,
                        "--interval-ms", 10, "--dataset", "npz:" + data, "--limit", 300, "--inflight", 2,
                        "--reconnect-timeout", 2, "--fallback", "local", "--report", report)
    try:
        wait_for_hello(srv)
        time.sleep(1.0)
    finally:
        srv.proc.kill()
        srv.proc.wait(30)
    out, err = edge.communicate(timeout=300)
    assert edge.returncode == 0, err
    r = json.loads(report.read_text())
    local = r["served_by"].count("local")
    assert r["predictions"] == labels[:300].tolist()
    assert 0 < local < 300 and r["served_by"] == ["cloud"] * (300 - local) + ["local"] * local
    assert "Local fallback: {} samples".format(local) in out


def test_a_stalled_link_is_answered_on_the_edge_and_split_local_needs_no_cloud(tiny_bundles, tiny_labelled_npz,
                                                                              tmp_path):
    """As tests/test_local_answer.py's, with the edge on Python 3.6: --deadline-ms through a link that holds
    every reply for 30 frames, then --split local with no cloud at all."""
    from slow_proxy import GateProxy, answer_through_a_stall
    srv = ServerProcess(tiny_bundles)
    proxy = GateProxy(srv.host, srv.port)
    report = tmp_path / "r.json"
    data, labels = tiny_labelled_npz
    try:
        edge = start_edge36("--cloud", proxy.address, "--artifacts", tmp_path / "cache", "--model", TINY_ID,
                            "--split", 4, "--interval-ms", 10, "--deadline-ms", 100, "--dataset", "npz:" + data,
                            "--limit", 150, "--verbose", "--report", report)
        printed, err, held = answer_through_a_stall(edge, proxy, 30, 60)
    finally:
        proxy.open()
        proxy.close()
        assert srv.stop() == 0
    assert edge.returncode == 0, "".join(err)
    r = json.loads(report.read_text())
    assert held >= 1 and r["predictions"] == labels[:150].tolist()
    assert r["paths"]["hedged"]["requests"] >= 1 and r["paths"]["local"]["requests"] >= 28 and r["late_replies"] >= 1
    import shutil
    shutil.copytree(str(tiny_bundle(tiny_bundles, 7)), str(tmp_path / "cache" / tiny_bundle(tiny_bundles, 7).name))
    local = report_of(run_edge36("--split", "local", "--artifacts", tmp_path / "cache", "--model", TINY_ID,
                                 "--dataset", "npz:" + data, "--limit", 20, "--report", report), report)
    assert local["split"] == "local" and local["predictions"] == labels[:20].tolist()


def test_the_kserve_edge_against_a_real_triton_server(tiny_bundles, tiny_labelled_npz, tmp_path):
    """tritonclient 2.41.1 and grpcio 1.48.2 on Python 3.6 against Triton; http:// needs geventhttpclient, which
    the Jetson's tier leaves out: one line saying so."""
    from triton_server import TritonProcess, unavailable
    why = unavailable()
    if why:
        pytest.skip(why)
    from runtime.cloud.triton import TritonOptions, export_triton
    repo = tmp_path / "repo"
    export_triton(str(tiny_bundle(tiny_bundles, 3)), TritonOptions(repo=str(repo), platform="python", max_batch=8))
    server = TritonProcess(repo)
    report = tmp_path / "r.json"
    data, labels = tiny_labelled_npz
    common = ["--artifacts", tiny_bundles, "--model", TINY_ID, "--split", 3, "--dataset", "npz:" + data]
    try:
        done = run_edge36("--cloud", "grpc://" + server.grpc, "--limit", 100, "--inflight", 4, "--report", report,
                          *common)
        http = run_edge36("--cloud", "http://" + server.http, "--limit", 5, *common)
    finally:
        assert server.stop() == 0
    r = report_of(done, report)
    assert r["predictions"] == labels[:100].tolist()
    assert http.returncode != 0 and "tritonclient" in http.stderr.strip().splitlines()[-1]


def test_energy_from_an_emulated_nano_rail_that_follows_the_cpu(tiny_server, tiny_bundles, tiny_labelled_npz,
                                                                 tmp_path):
    """``--power ina3221 --sysfs-root``: a Nano's tree whose total rail follows this machine's CPU use
    (tests/fixtures/sysfs_trees.py run as a script); the run draws more than the idle baseline before it."""
    root = tmp_path / "sysfs"
    rail = subprocess.Popen([sys.executable, os.path.join(REPO, "tests", "fixtures", "sysfs_trees.py"), str(root),
                             "--idle-mw", "1300", "--mw-per-core", "1800"])
    report = tmp_path / "r.json"
    try:
        deadline = time.time() + 30
        while not os.path.exists(str(root / "sys/bus/i2c/drivers/ina3221x/6-0040")) and time.time() < deadline:
            time.sleep(0.05)
        proc = run_edge36("--cloud", tiny_server.address, "--artifacts", tiny_bundles, "--model", TINY_ID, "--split",
                          4, "--dataset", "npz:" + tiny_labelled_npz[0], "--limit", 400, "--power", "ina3221",
                          "--sysfs-root", root, "--report", report)
    finally:
        rail.terminate()
        rail.wait(30)
    energy = report_of(proc, report)["energy"]
    assert energy["measured"] and (energy["source"], energy["rail"]) == ("ina3221x", "POM_5V_IN"), energy
    assert 1300 <= energy["idle_power_mw"] < energy["avg_power_mw"] <= 1300 + 1800 * (os.cpu_count() or 1)
    assert energy["mj_per_sample"] > 0
    assert "energy: {:.3f} mJ/sample".format(energy["mj_per_sample"]) in proc.stdout
