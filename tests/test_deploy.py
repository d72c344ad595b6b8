"""push, fetch, export on demand and hot swap, with real server and edge processes over loopback.

The tests' tiny model (tests/fixtures/tiny_models.py) is pushed and fetched, except where a test needs a head
big enough to be caught half-way through its download or to fill a small disk: there, the seed's ResNet-50."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from cloud_server import ServerProcess
from conftest import REPO, TINY_ID, run_cli, tiny_bundle
from slow_proxy import SlowProxy

TOKEN = "test-admin-token"


def cli_args(*args):
    return [sys.executable, os.path.join(REPO, "cli.py")] + [str(a) for a in args]


@pytest.fixture()
def cloud(tmp_path):
    """A server with an empty store that accepts pushes."""
    srv = ServerProcess(tmp_path / "store", "--allow-push", "--admin-token", TOKEN)
    yield srv
    assert srv.stop() == 0, srv.log_text()


@pytest.fixture(scope="module")
def labelled_npz(tiny_labelled_npz):
    return tiny_labelled_npz


def resnet50_bundle(seed_bundles, split):
    return seed_bundles[0] / "resnet50-s{}".format(split)


def push(srv, path, *extra, **kw):
    return run_cli("push", path, "--cloud", srv.address, "--admin-token", TOKEN, *extra, **kw)


def run_edge(srv, cache, *args, model=TINY_ID):
    return run_cli("run-edge", "--cloud", srv.address, "--cache", cache, "--model", model, *args)


def bundle_id(path):
    return json.load(open(os.path.join(str(path), "manifest.json")))["bundle_id"]


def test_empty_store_push_then_an_empty_cache_fetches_verifies_and_runs(cloud, tiny_bundles, labelled_npz, tmp_path):
    src = tiny_bundle(tiny_bundles, 4)
    proc = push(cloud, src, "--activate")
    assert proc.returncode == 0, proc.stderr
    assert "pushed {}".format(bundle_id(src)) in proc.stdout and "active" in proc.stdout
    data, labels = labelled_npz
    cache = tmp_path / "edge-cache"
    first = run_edge(cloud, cache, "--dataset", "npz:" + data, "--limit", 16, "--report", tmp_path / "r1.json")
    assert first.returncode == 0, first.stderr
    r1 = json.loads((tmp_path / "r1.json").read_text())
    assert r1["predictions"] == labels[:16].tolist() and r1["split"] == 4
    head = os.path.getsize(str(src / "head.onnx"))
    assert len(r1["fetches"]) == 1 and head <= r1["fetches"][0]["bytes"] < head * 1.01 + 512  # + the frames
    assert sorted(f for f in os.listdir(str(cache / src.name)) if not f.startswith(".")) == [
        "head.onnx", "manifest.json"]  # the head only (and onnxruntime's optimised copy, .ort-opt/)
    second = run_edge(cloud, cache, "--dataset", "npz:" + data, "--limit", 16, "--report", tmp_path / "r2.json")
    assert second.returncode == 0, second.stderr
    r2 = json.loads((tmp_path / "r2.json").read_text())
    assert r2["fetches"] == [] and r2["predictions"] == r1["predictions"]  # started from the cache
    assert sum("event=fetch" in l and "part=head" in l for l in cloud.log) == 1


def test_pushing_the_same_bundle_again_uploads_nothing(cloud, tiny_bundles):
    src = tiny_bundle(tiny_bundles, 5)
    assert push(cloud, src).returncode == 0
    again = push(cloud, src)
    assert again.returncode == 0 and "already there, nothing uploaded" in again.stdout


def test_push_without_or_with_a_wrong_token_is_refused(tiny_bundles, tmp_path):
    src = tiny_bundle(tiny_bundles, 4)
    (tmp_path / "closed").mkdir()
    closed = ServerProcess(tmp_path / "closed")
    try:
        proc = push(closed, src)
        assert proc.returncode != 0 and "does not accept pushes" in proc.stderr
    finally:
        assert closed.stop() == 0
    srv = ServerProcess(tmp_path / "store", "--allow-push", "--admin-token", TOKEN)
    try:
        proc = run_cli("push", src, "--cloud", srv.address, env={"EDGESPLIT_ADMIN_TOKEN": ""})
        assert proc.returncode != 0 and "admin token" in proc.stderr
        proc = run_cli("push", src, "--cloud", srv.address, "--admin-token", "guess")
        assert proc.returncode != 0 and "wrong admin token" in proc.stderr
        proc = run_cli("push", src, "--cloud", srv.address, env={"EDGESPLIT_ADMIN_TOKEN": TOKEN})
        assert proc.returncode == 0, proc.stderr  # the environment variable works too
    finally:
        assert srv.stop() == 0
    assert "bad_token" in srv.log_text() and TOKEN not in srv.log_text()


def _tampered_copy(src, dest, name="tail.onnx"):
    shutil.copytree(str(src), str(dest))
    with open(str(dest / name), "r+b") as f:
        f.seek(5000)
        f.write(b"tampered")
    return dest


def test_a_tampered_file_is_refused_at_push_by_the_client_and_by_the_server(cloud, tiny_bundles, tmp_path):
    bad = _tampered_copy(tiny_bundle(tiny_bundles, 4), tmp_path / "s4")
    proc = push(cloud, bad)
    assert proc.returncode != 0 and "tail.onnx is corrupt: sha256" in proc.stderr and "manifest says" in proc.stderr
    # the server checks too: send the tampered bytes under the genuine manifest, bypassing the client's check
    from runtime.edge.client import CloudConnection
    from runtime.wire import auth, codec
    manifest = json.load(open(str(bad / "manifest.json")))
    conn = CloudConnection(cloud.address)
    nonce = conn.hello({"role": "admin"})["nonce"]
    with pytest.raises(codec.RemoteError, match=r"tail.onnx has sha256 \w+ but the manifest says \w+"):
        conn.push(manifest, str(bad), True, auth.proof(TOKEN, nonce, auth.ADMIN))
    conn.sock.close()
    store = tmp_path / "store"
    assert os.listdir(str(store)) == []  # nothing visible, no temporary directory left


def test_a_file_that_changed_in_the_cloud_store_is_refused_at_fetch(cloud, tiny_bundles, tmp_path):
    src = tiny_bundle(tiny_bundles, 3)
    assert push(cloud, src, "--activate").returncode == 0
    with open(str(tmp_path / "store" / src.name / "head.onnx"), "r+b") as f:
        f.seek(100)
        f.write(b"bitrot")
    proc = run_edge(cloud, tmp_path / "cache", "--dataset", "synthetic", "--limit", 2)
    assert proc.returncode != 0 and "head.onnx is corrupt: sha256" in proc.stderr
    assert not os.path.exists(str(tmp_path / "cache" / src.name))


def test_a_corrupt_cache_entry_is_deleted_and_fetched_again(cloud, tiny_bundles, labelled_npz, tmp_path):
    src = tiny_bundle(tiny_bundles, 3)
    assert push(cloud, src, "--activate").returncode == 0
    cache = tmp_path / "cache"
    data, labels = labelled_npz
    assert run_edge(cloud, cache, "--dataset", "npz:" + data, "--limit", 4).returncode == 0
    with open(str(cache / src.name / "head.onnx"), "r+b") as f:
        f.seek(200)
        f.write(b"\0\0\0\0")
    proc = run_edge(cloud, cache, "--dataset", "npz:" + data, "--limit", 4, "--report", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr
    assert "head.onnx is corrupt" in proc.stderr and "fetching again" in proc.stderr
    r = json.loads((tmp_path / "r.json").read_text())
    assert len(r["fetches"]) == 1 and r["predictions"] == labels[:4].tolist()


def test_edges_sharing_one_empty_cache_fetch_the_head_once(cloud, tiny_bundles, labelled_npz, tmp_path):
    src = tiny_bundle(tiny_bundles, 3)
    assert push(cloud, src, "--activate").returncode == 0
    cache = tmp_path / "shared-cache"
    data, labels = labelled_npz
    procs = []
    for i in range(4):  # at once, as processes on one device would
        report = tmp_path / "r{}.json".format(i)
        procs.append((subprocess.Popen([sys.executable, os.path.join(REPO, "cli.py"), "run-edge", "--cloud",
                                        cloud.address, "--cache", str(cache), "--model", TINY_ID,
                                        "--dataset", "npz:" + data,
                                        "--limit", "6", "--report", str(report)],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), report))
    downloaded = 0
    for proc, report in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        r = json.loads(report.read_text())
        assert r["predictions"] == labels[:6].tolist()
        downloaded += sum(1 for f in r["fetches"] if f["bytes"] > 0)
    assert downloaded == 1  # the others waited on the cache's lock and found it there
    assert sorted(os.listdir(str(cache))) == [".lock", src.name]


def test_a_fetch_killed_half_way_leaves_nothing_and_the_next_run_succeeds(cloud, seed_bundles, tmp_path):
    assert push(cloud, resnet50_bundle(seed_bundles, 20), "--activate").returncode == 0
    proxy = SlowProxy(cloud.host, cloud.port, bytes_per_s=20 * 1024 * 1024)  # the 90 MiB head takes ~4.5 s
    cache = tmp_path / "cache"
    try:
        edge = subprocess.Popen(cli_args("run-edge", "--cloud", proxy.address, "--cache", cache,
                                         "--model", "resnet50", "--dataset", "synthetic", "--limit", 2),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while proxy.forwarded < 20 * 1024 * 1024 and time.time() < deadline:
            time.sleep(0.05)
        assert proxy.forwarded >= 20 * 1024 * 1024
        edge.send_signal(signal.SIGKILL)
        edge.wait(30)
    finally:
        proxy.close()
    assert [d for d in os.listdir(str(cache)) if not d.startswith(".tmp-fetch-") and d != ".lock"] == []  # no bundle
    proc = run_edge(cloud, cache, "--dataset", "synthetic", "--limit", 2, model="resnet50")
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(str(cache))) == [".lock", "resnet50-s20"]  # the dead fetch's temp dir is gone


def test_a_full_disk_is_one_clear_line_and_leaves_nothing(cloud, seed_bundles, tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    if subprocess.call(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                       stderr=subprocess.DEVNULL) != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        assert push(cloud, resnet50_bundle(seed_bundles, 20), "--activate").returncode == 0
        proc = run_edge(cloud, mount, "--dataset", "synthetic", "--limit", 2, model="resnet50")
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        assert "No space left on device" in proc.stderr and "head.onnx" in proc.stderr
        assert [d for d in os.listdir(str(mount)) if d != ".lock"] == []  # the lock file is empty
    finally:
        subprocess.call(["umount", str(mount)])


def test_export_on_demand_once_for_two_waiting_edges(tmp_path):
    """serve-cloud --model takes the exporter's name (package.module:function); edges ask by the model id its
    manifests carry (package-module-function), which the server learns from the exporter when it starts."""
    srv = ServerProcess(tmp_path / "store", "--model", "tiny_models:classifier", "--random-init")
    try:
        edges = [subprocess.Popen(cli_args("run-edge", "--cloud", srv.address, "--cache", tmp_path / "cache{}".format(i),
                                           "--model", TINY_ID, "--split", 3, "--dataset", "synthetic", "--limit", 3,
                                           "--timeout", 20),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
        for edge in edges:
            out, err = edge.communicate(timeout=600)
            assert edge.returncode == 0, err
            assert "the cloud is exporting {} split 3".format(TINY_ID) in err and "Accuracy:" in out
    finally:
        assert srv.stop() == 0
    assert "(model id {}) are exported on demand".format(TINY_ID) in srv.log_text()
    assert srv.log_text().count("exporting {} split 3 on demand".format(TINY_ID)) == 1
    assert os.listdir(str(tmp_path / "store")) == [TINY_ID + "-s3"]


def test_serve_cloud_with_a_model_the_exporter_cannot_build_stops_at_start(tmp_path):
    proc = run_cli("serve-cloud", "--port", 0, "--artifacts", tmp_path / "store", "--model", "tiny_models:nothing")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "tiny_models:nothing" in last and "cannot build it" in last and "Traceback" not in proc.stderr


def test_hot_swap_4_to_1_and_back_loses_and_repeats_no_sample(cloud, tiny_bundles, labelled_npz, tmp_path):
    """A sample every 20 ms (--interval-ms): the 10 s run spans both swaps (each push takes about a second)."""
    s4, s1 = tiny_bundle(tiny_bundles, 4), tiny_bundle(tiny_bundles, 1)
    id4, id1 = bundle_id(s4), bundle_id(s1)
    assert push(cloud, s4, "--activate").returncode == 0
    assert push(cloud, s1).returncode == 0
    data, labels = labelled_npz
    report = tmp_path / "r.json"
    edge = subprocess.Popen(cli_args("run-edge", "--cloud", cloud.address, "--cache", tmp_path / "cache",
                                     "--model", TINY_ID, "--interval-ms", 20, "--dataset", "npz:" + data,
                                     "--limit", 500, "--report", report),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait_for(text, after=0):
        deadline = time.time() + 120
        while sum(text in l for l in cloud.log) <= after and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # let some samples run on it

    wait_for("bundle={} model=".format(id4))  # event=hello
    assert push(cloud, s1, "--activate").returncode == 0
    wait_for("bundle={} model=".format(id1))
    assert push(cloud, s4, "--activate").returncode == 0
    out, err = edge.communicate(timeout=300)
    assert edge.returncode == 0, err
    r = json.loads(report.read_text())
    assert r["n"] == 500 and r["labels"] == labels.tolist()
    assert r["predictions"] == labels.tolist()  # every sample answered once, and correctly
    assert [(s["from_split"], s["to_split"]) for s in r["switches"]] == [(4, 1), (1, 4)]
    served = r["bundles"]
    first, second = r["switches"][0]["after_samples"], r["switches"][1]["after_samples"]
    assert 0 < first < second < 500
    assert set(served[:first]) == {id4} and set(served[first:second]) == {id1} and set(served[second:]) == {id4}
    assert "Switches: split 4 -> 1" in out


def test_push_to_a_directory_copies_verified_and_atomically(tiny_bundles, tmp_path):
    src = tiny_bundle(tiny_bundles, 5)
    proc = run_cli("push", src, "--to", tmp_path / "sdcard")
    assert proc.returncode == 0, proc.stderr
    from runtime.bundle.manifest import load_manifest
    load_manifest(str(tmp_path / "sdcard" / src.name)).verify_files()
    bad = _tampered_copy(src, tmp_path / "bad" / src.name, "head.pt")
    proc = run_cli("push", bad, "--to", tmp_path / "sdcard2")
    assert proc.returncode != 0 and "head.pt is corrupt" in proc.stderr
    assert not os.path.exists(str(tmp_path / "sdcard2")) or os.listdir(str(tmp_path / "sdcard2")) == []
    proc = run_cli("push", src)
    assert proc.returncode == 2 and "exactly one of --cloud" in proc.stderr


def test_the_cache_keeps_the_newest_bundles(cloud, tiny_bundles, tmp_path):
    for split in (4, 7):
        assert push(cloud, tiny_bundle(tiny_bundles, split)).returncode == 0
    cache = tmp_path / "cache"
    for split in (4, 7):
        proc = run_edge(cloud, cache, "--split", split, "--dataset", "synthetic", "--limit", 2, "--cache-keep", 1)
        assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(str(cache))) == [".lock", tiny_bundle(tiny_bundles, 7).name]


def test_only_transfer_directories_of_dead_processes_are_cleaned(tmp_path):
    from runtime.bundle.staging import remove_stale_temp_dirs
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    names = [".tmp-fetch-{}-a".format(dead.pid), ".tmp-push-{}-b".format(os.getpid()),
             ".tmp-resnet50-s20-c", "resnet50-s3"]
    for name in names:
        (tmp_path / name).mkdir()
    remove_stale_temp_dirs(str(tmp_path))
    assert sorted(os.listdir(str(tmp_path))) == sorted(names[1:])  # a live push and an export in progress stay
