"""Real NVIDIA Triton servers (``cli.py serve-triton``: the tritonserver of nvidia-pytriton, in the python
environment ``make triton-env`` makes) serving tails that ``export-triton --platform python`` wrote, and real
``run-edge --cloud grpc://`` / ``http://`` processes against them.

The tiny model (tests/fixtures/tiny_models.py) is served at splits 3 and 5; its labels come from the tests' own
torch copy, so "every sample answered once, correctly" is one comparison of a report's predictions with them.
ResNet-50 (the seed's numbering) is served at splits 3 and 20 for the parity test.  Skipped, with the reason,
where nvidia-pytriton could not be installed.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from conftest import REPO, TINY_ID, run_cli, tiny_bundle
from triton_server import TritonProcess, unavailable

from runtime.backends import load_part
from runtime.bundle.manifest import load_manifest
from runtime.cloud.triton import TritonOptions, export_triton

REASON = unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

BACKENDS = ("onnx", "torchscript")
FP16_ENTRY = "{}-s5-fp16".format(TINY_ID)


def fresh_torch_threads():
    """torch's thread count in a fresh process, as Triton's stub has it.  TorchScript's sums depend on it, and
    this test process's count is whatever an earlier test's --threads left (torch.set_num_threads is global)."""
    done = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                          capture_output=True, text=True, check=True)
    return int(done.stdout)


def local_parts(manifest, backend):
    """The bundle's head and tail run here as the stub runs the tail: same backend, a fresh process's threads."""
    threads = fresh_torch_threads() if backend == "torchscript" else 0
    return [load_part(manifest, part, backend, "cpu", threads) for part in ("head", "tail")]


def entry_name(split, backend):
    return "{}-s{}".format(TINY_ID, split) + ("-ts" if backend == "torchscript" else "")


@pytest.fixture(scope="module")
def tiny_repo(tiny_bundles, tmp_path_factory):
    """Python-backend entries of the tiny model's tails: splits 3 and 5 with onnxruntime, split 3 with TorchScript.
    A 5 ms queue delay lets Triton's dynamic batcher merge requests from concurrent edges."""
    repo = tmp_path_factory.mktemp("triton-repo")
    for split, backend in ((3, "onnx"), (5, "onnx"), (3, "torchscript")):
        export_triton(str(tiny_bundle(tiny_bundles, split)), TritonOptions(
            repo=str(repo), platform="python", backend=backend, name=entry_name(split, backend), max_batch=8,
            max_queue_delay_us=5000, instances=1))
    export_triton(str(tiny_bundle(tiny_bundles, 5)), TritonOptions(
        repo=str(repo), platform="python", name=FP16_ENTRY, max_batch=8, input_dtype="float16"))
    return repo


@pytest.fixture(scope="module")
def triton(tiny_repo):
    server = TritonProcess(tiny_repo)
    yield server
    assert server.stop() == 0, server.log_text()[-2000:]


def edge_argv(cloud, artifacts, npz, *args, split=3, limit=100):
    return [sys.executable, os.path.join(REPO, "cli.py"), "run-edge", "--cloud", cloud, "--artifacts",
            str(artifacts), "--model", TINY_ID, "--split", str(split), "--dataset", "npz:" + npz,
            "--limit", str(limit)] + [str(a) for a in args]


def run_edge(cloud, artifacts, npz, tmp_path, *args, split=3, limit=100, name="r.json"):
    report = tmp_path / name
    done = subprocess.run(edge_argv(cloud, artifacts, npz, "--report", report, *args, split=split, limit=limit),
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(report.read_text()), done.stdout


def statistics(server, model):
    import tritonclient.grpc as grpcclient
    client = grpcclient.InferenceServerClient(server.grpc)
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    client.close()
    # protobuf's JSON leaves out fields that are 0
    return int(stats["inference_stats"]["success"].get("count", 0)), int(stats.get("execution_count", 0))


def test_the_ready_line_names_three_loopback_ports_and_sigterm_leaves_nothing_running(tiny_repo):
    server = TritonProcess(tiny_repo)
    pid = server.server_pid()
    stubs = [p for p in os.listdir("/proc") if p.isdigit() and _parent(p) == pid]
    assert stubs, "the python backend runs each instance in a stub process"
    assert all(address.startswith("127.0.0.1:") for address in (server.grpc, server.http, server.metrics))
    assert len(set(server.ports.values())) == 3
    backends = re.search(r"--backend-directory=(\S+)", open("/proc/{}/cmdline".format(pid)).read().replace(
        "\0", " ")).group(1)
    assert server.stop() == 0
    alive = [p for p in [str(pid)] + stubs if os.path.exists("/proc/" + p) and _state(p) != "Z"]
    assert not alive, "left running after SIGTERM: {}".format(alive)
    assert not os.path.exists(backends), "serve-triton's scratch backend directory was left behind"


def _parent(pid):
    try:
        with open("/proc/{}/stat".format(pid)) as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


def _state(pid):
    try:
        with open("/proc/{}/stat".format(pid)) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_run_edge_against_triton_answers_every_sample_as_the_local_model(triton, tiny_bundles, tiny_labelled_npz,
                                                                         tmp_path, backend, scheme):
    cloud = "{}://{}".format(scheme, triton.grpc if scheme == "grpc" else triton.http)
    before = statistics(triton, entry_name(3, backend))[0]
    report, out = run_edge(cloud, tiny_bundles, tiny_labelled_npz[0], tmp_path, "--triton-model",
                           entry_name(3, backend), "--backend", backend, "--batch-size", 2)
    assert report["n"] == 100 and report["predictions"] == tiny_labelled_npz[1][:100].tolist()
    assert report["accuracy"] == 1.0 and "Accuracy: 100.00%" in out
    # cloud and queue are Triton's run averages: the same for every request, taken from its counters
    counted = report["cloud_counted"]
    assert counted["requests"] == 50 and statistics(triton, entry_name(3, backend))[0] - before == 50 + 3
    assert report["cloud_ms"]["p50"] == report["cloud_ms"]["p99"] > 0
    assert "run averages from Triton's statistics (50 requests" in out
    assert report["cloud_backend"] == "triton python"


@pytest.mark.parametrize("backend", BACKENDS)
def test_triton_outputs_are_bit_identical_to_the_local_tail(triton, tiny_bundles, backend):
    import tritonclient.grpc as grpcclient
    manifest = load_manifest(str(tiny_bundle(tiny_bundles, 3)))
    head, tail = local_parts(manifest, backend)
    x = np.random.RandomState(5).rand(4, 3, 16, 16).astype(np.float32)
    boundary = head.run(x)
    client = grpcclient.InferenceServerClient(triton.grpc)
    tensor = grpcclient.InferInput(manifest["boundary"]["name"], list(boundary.shape), "FP32")
    tensor.set_data_from_numpy(boundary)
    got = client.infer(entry_name(3, backend), [tensor]).as_numpy(manifest["output"]["name"])
    client.close()
    assert got.dtype == np.float32 and np.array_equal(got, tail.run(boundary))


def test_a_float16_tail_casts_inside_triton_and_the_edge_sends_half_the_bytes(triton, tiny_bundles,
                                                                             tiny_labelled_npz, tmp_path):
    import tritonclient.grpc as grpcclient
    manifest = load_manifest(str(tiny_bundle(tiny_bundles, 5)))
    head, tail = (load_part(manifest, part, "onnx", "cpu") for part in ("head", "tail"))
    half = head.run(np.random.RandomState(6).rand(3, 3, 16, 16).astype(np.float32)).astype(np.float16)
    client = grpcclient.InferenceServerClient(triton.grpc)
    tensor = grpcclient.InferInput(manifest["boundary"]["name"], list(half.shape), "FP16")
    tensor.set_data_from_numpy(half)
    got = client.infer(FP16_ENTRY, [tensor]).as_numpy(manifest["output"]["name"])
    client.close()
    assert np.array_equal(got, tail.run(half.astype(np.float32)))  # the cast, then the same tail
    plain, _ = run_edge("grpc://" + triton.grpc, tiny_bundles, tiny_labelled_npz[0], tmp_path, split=5, limit=50,
                        name="plain.json")
    half_run, _ = run_edge("grpc://" + triton.grpc, tiny_bundles, tiny_labelled_npz[0], tmp_path, "--compress",
                           "fp16", "--triton-model", FP16_ENTRY, split=5, limit=50, name="fp16.json")
    assert half_run["bytes_sent_per_sample"] == plain["bytes_sent_per_sample"] / 2
    assert half_run["accuracy"] >= 0.96 and half_run["compress"] == "fp16"


def test_eight_edges_at_once_get_their_own_answers_and_triton_batches_them(triton, tiny_bundles, tiny_labelled_npz,
                                                                           tmp_path):
    name = entry_name(5, "onnx")
    requests0, executions0 = statistics(triton, name)
    start_at = time.time() + 6  # every edge loaded and warmed up before the first measured request
    edges = []
    for i in range(8):
        report = tmp_path / "e{}.json".format(i)
        edges.append((report, subprocess.Popen(
            edge_argv("grpc://" + triton.grpc, tiny_bundles, tiny_labelled_npz[0], "--report", report, "--start-at",
                      start_at, "--shuffle", "--seed", i, split=5, limit=60),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)))
    for report, edge in edges:
        _, err = edge.communicate(timeout=600)
        assert edge.returncode == 0, err
    labels = tiny_labelled_npz[1]
    seen = set()
    for report, _ in edges:
        r = json.loads(report.read_text())
        assert r["n"] == 60 and r["accuracy"] == 1.0
        assert r["predictions"] == r["labels"] and set(r["labels"]) <= set(labels.tolist())
        seen.add(tuple(r["labels"]))
    assert len(seen) == 8, "each edge ran its own shuffled samples"
    requests, executions = statistics(triton, name)
    assert requests - requests0 == 8 * (60 + 3)
    assert executions - executions0 < requests - requests0, "Triton's dynamic batcher merged no requests"


def test_prometheus_metrics_count_the_requests(triton, tiny_bundles, tiny_labelled_npz, tmp_path):
    run_edge("grpc://" + triton.grpc, tiny_bundles, tiny_labelled_npz[0], tmp_path, split=5, limit=20)
    text = urllib.request.urlopen("http://{}/metrics".format(triton.metrics), timeout=10).read().decode()
    found = re.search(r'nv_inference_request_success\{model="%s",version="1"\} (\d+)' % re.escape(
        entry_name(5, "onnx")), text)
    assert found and int(found.group(1)) >= 23, text[:2000]


@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_inflight_requests_are_answered_in_order(triton, tiny_bundles, tiny_labelled_npz, tmp_path, scheme):
    cloud = "{}://{}".format(scheme, triton.grpc if scheme == "grpc" else triton.http)
    report, _ = run_edge(cloud, tiny_bundles, tiny_labelled_npz[0], tmp_path, "--inflight", 4,
                         split=5)
    assert report["predictions"] == tiny_labelled_npz[1][:100].tolist() and report["inflight"] == 4


@pytest.fixture(scope="module")
def seed_triton(seed_bundles, tmp_path_factory):
    """Python-backend entries of the seed's ResNet-50 tails at splits 3 and 20, with both backends."""
    root, _ = seed_bundles
    repo = tmp_path_factory.mktemp("seed-triton-repo")
    for split in (3, 20):
        for backend in BACKENDS:
            export_triton(str(root / "resnet50-s{}".format(split)), TritonOptions(
                repo=str(repo), platform="python", backend=backend, name="resnet50-s{}-{}".format(split, backend)))
    server = TritonProcess(repo)
    yield server
    assert server.stop() == 0


@pytest.mark.parametrize("split", [3, 20])
def test_resnet50_tails_on_triton_are_bit_identical_to_the_local_tail(seed_triton, seed_bundles, split):
    import tritonclient.http as httpclient
    root, _ = seed_bundles
    manifest = load_manifest(str(root / "resnet50-s{}".format(split)))
    x = np.random.RandomState(split).rand(2, 3, 32, 32).astype(np.float32)
    client = httpclient.InferenceServerClient(seed_triton.http)
    for backend in BACKENDS:
        head, tail = local_parts(manifest, backend)
        boundary = head.run(x)
        tensor = httpclient.InferInput(manifest["boundary"]["name"], list(boundary.shape), "FP32")
        tensor.set_data_from_numpy(boundary, binary_data=True)
        got = client.infer("resnet50-s{}-{}".format(split, backend), [tensor]).as_numpy(manifest["output"]["name"])
        assert got.shape == (2, 100) and np.array_equal(got, tail.run(boundary)), backend
    client.close()


def test_the_seed_report_against_triton_at_split_20(seed_triton, seed_bundles, labelled_npz, tmp_path):
    report = tmp_path / "r.json"
    done = subprocess.run([sys.executable, os.path.join(REPO, "cli.py"), "run-edge", "--cloud",
                           "grpc://" + seed_triton.grpc, "--artifacts", str(seed_bundles[0]), "--split", "20",
                           "--triton-model", "resnet50-s20-onnx", "--dataset", "npz:" + labelled_npz[0],
                           "--limit", "40", "--report", str(report)], capture_output=True, text=True, cwd=REPO,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    for line in ("Accuracy: 100.00%", "Avg edge inference latency: ", "Avg transmission latency: ",
                 "Avg cloud inference latency: "):
        assert line in done.stdout
    r = json.loads(report.read_text())
    assert r["split"] == 20 and r["n"] == 40 and r["cloud_counted"]["requests"] == 40


def _refused(cloud, artifacts, npz, *args, split=3):
    done = subprocess.run(edge_argv(cloud, artifacts, npz, *args, split=split, limit=5), capture_output=True,
                          text=True, cwd=REPO, timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and lines and "Traceback" not in done.stderr, done.stderr
    return lines[-1]


def test_a_model_that_does_not_pair_with_the_head_is_refused_in_one_line(triton, tiny_bundles, tiny_labelled_npz,
                                                                         tmp_path):
    cloud, npz = "grpc://" + triton.grpc, tiny_labelled_npz[0]
    # the model named for split 5 serves split 3's bundle
    said = _refused(cloud, tiny_bundles, npz, "--triton-model", entry_name(3, "onnx"), split=5)
    assert "serves bundle" in said and "of split 3, not split 5" in said
    # a cache without the served bundle's head
    only5 = tmp_path / "cache"
    only5.mkdir()
    os.symlink(str(tiny_bundle(tiny_bundles, 5)), str(only5 / os.path.basename(str(tiny_bundle(tiny_bundles, 5)))))
    said = _refused(cloud, only5, npz, split=3)
    assert "whose head is not in the edge's cache" in said
    # fp16 activations to a tail that takes float32
    said = _refused(cloud, tiny_bundles, npz, "--compress", "fp16", split=3)
    assert "takes float32" in said and "--input-dtype float16" in said
    # another model id
    said = _refused(cloud, tiny_bundles, npz, "--triton-model", "nonesuch", split=3)
    assert "has no model nonesuch ready" in said and entry_name(3, "onnx") in said


def test_a_triton_that_is_not_running_is_one_line(tiny_bundles, tiny_labelled_npz):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    said = _refused("grpc://127.0.0.1:{}".format(port), tiny_bundles, tiny_labelled_npz[0],
                    "--reconnect-timeout", 0)
    assert "Triton at grpc://127.0.0.1:{}".format(port) in said


def test_serve_triton_bad_input_is_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, expected in ((["--repo", str(tmp_path / "missing")], "no such model repository"),
                           (["--repo", str(empty)], "holds no model"),
                           (["--repo", str(empty), "--python-env", str(tmp_path)], "holds no model")):
        done = run_cli("serve-triton", *args, timeout=120)
        assert done.returncode != 0 and expected in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_python_env_without_pytriton_is_one_line(tiny_repo, tmp_path):
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    done = run_cli("serve-triton", "--repo", tiny_repo, "--python-env", env, timeout=120,
                   env={"PATH": os.path.dirname(sys.executable) + os.pathsep + "/usr/bin:/bin"})
    assert done.returncode != 0 and "no nvidia-pytriton in" in done.stderr and "Traceback" not in done.stderr


def _start_edge(cloud, artifacts, npz, report, *args, limit=300):
    return subprocess.Popen(edge_argv(cloud, artifacts, npz, "--report", report, "--interval-ms", 10, *args,
                                      split=5, limit=limit),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


def _wait_for(server, name, at_least, edge, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert edge.poll() is None, "the edge ended early: " + edge.communicate()[1]
        if statistics(server, name)[0] >= at_least:
            return
        time.sleep(0.1)
    raise AssertionError("the edge did not reach {} requests".format(at_least))


@pytest.mark.parametrize("inflight", [1, 4])
def test_triton_killed_and_restarted_mid_run_loses_and_repeats_nothing(tiny_repo, tiny_bundles, tiny_labelled_npz,
                                                                       tmp_path, inflight):
    server = TritonProcess(tiny_repo)
    report = tmp_path / "r.json"
    edge = _start_edge("grpc://" + server.grpc, tiny_bundles, tiny_labelled_npz[0], report, "--inflight", inflight,
                       "--reconnect-timeout", 120)
    try:
        _wait_for(server, entry_name(5, "onnx"), 80, edge)
        server.kill_server()
        time.sleep(1.0)  # the edge meets a dead port and backs off
        server = TritonProcess(tiny_repo, **{k + "_port": v for k, v in server.ports.items()})
        out, err = edge.communicate(timeout=300)
        answered_after = statistics(server, entry_name(5, "onnx"))[0]
    finally:
        if edge.poll() is None:
            edge.kill()
        assert server.stop() == 0
    assert edge.returncode == 0, err
    r = json.loads(report.read_text())
    assert r["n"] == 300 and r["predictions"] == tiny_labelled_npz[1][:300].tolist()
    assert len(r["reconnects"]) == 1 and "Reconnected after" in out, r["reconnects"]
    # the restarted server answered the rest, and its counters are the run's cloud figures
    assert 0 < answered_after < 300 and r["cloud_counted"]["requests"] == answered_after


def test_a_triton_that_stays_down_ends_the_run_with_the_count_done(tiny_repo, tiny_bundles, tiny_labelled_npz,
                                                                   tmp_path):
    server = TritonProcess(tiny_repo)
    edge = _start_edge("grpc://" + server.grpc, tiny_bundles, tiny_labelled_npz[0], tmp_path / "r.json",
                       "--reconnect-timeout", 2)
    try:
        _wait_for(server, entry_name(5, "onnx"), 50, edge)
        server.kill_server()
        _, err = edge.communicate(timeout=120)
    finally:
        if edge.poll() is None:
            edge.kill()
        server.stop()
    assert edge.returncode != 0
    last = err.strip().splitlines()[-1]
    assert re.search(r"\d+ of 300 samples done", last) and "Traceback" not in err, err


def test_without_model_the_models_triton_serves_are_read_from_its_entries(triton, tiny_bundles, tiny_labelled_npz,
                                                                         tmp_path):
    """A cache of two models and no --model: the one-line refusal lists which the cache holds and which Triton
    serves, read from its entries' model_id parameters."""
    from exporter.bundle import export_bundle
    from exporter.options import ExportOptions
    cache = tmp_path / "cache"
    shutil.copytree(str(tiny_bundle(tiny_bundles, 3)), str(cache / (TINY_ID + "-s3")))
    export_bundle("tiny_models:build", "1", ExportOptions(random_init=True, out_dir=str(cache), formats=["onnx"]))
    argv = edge_argv("grpc://" + triton.grpc, cache, tiny_labelled_npz[0], "--triton-model", entry_name(3, "onnx"),
                     limit=20, split=3)
    at = argv.index("--model")
    del argv[at:at + 2]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode != 0
    line = done.stderr.strip().splitlines()[-1]
    assert "tiny_models-build (cache), {} (cache, cloud)".format(TINY_ID) in line, done.stderr
