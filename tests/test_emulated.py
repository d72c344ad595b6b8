"""The planner against measurements, with a slow edge (CPU quota) and a slow network (tbf), as root only."""
import os
import sys

import pytest
from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "bench"))
import emulate  # noqa: E402

OK, WHY = emulate.available()
pytestmark = pytest.mark.skipif(not OK, reason=WHY)


@pytest.fixture(scope="module")
def work(tmp_path_factory, seed_bundles):
    """A cloud store holding the seed model's splits 0, 20, 22 (segments are exported on demand), and an edge
    cache holding the whole model (split 22), so that local is a choice at every rate."""
    import shutil
    root = tmp_path_factory.mktemp("emulated")
    for split in (0, 20, 22):
        shutil.copytree(str(seed_bundles[0] / "resnet50-s{}".format(split)),
                        str(root / "store" / "resnet50-s{}".format(split)))
    shutil.copytree(str(seed_bundles[0] / "resnet50-s22"), str(root / "edge" / "resnet50-s22"))
    return root


# at 1 Mbit/s the whole model on the edge: local, which split 22 trails by its round trip
@pytest.mark.parametrize("rate,best", [(1000, 0), (20, 0), (1, "local")])
def test_planner_choice_is_within_10_percent_of_the_measured_best(rate, best, work, seed_weights):
    row = emulate.check_planner(rate, 0.5, str(work / "store"), str(work / "edge"), [0, 20, 22], limit=8,
                                export_args=("--model", "resnet50", "--weights", seed_weights),
                                out_dir=str(work))
    assert row["ratio"] <= 1.10, emulate.format_rows([row]) + "\n" + str(row["measured"])
    # a fast network ships the input to the cloud (12 KiB); at 1 Mbit/s the edge (half a core) does it all
    measured = row["measured"]
    assert measured[best] <= 1.10 * min(measured.values()), measured


def test_the_link_really_is_rate_limited(work):
    import socket
    import subprocess
    import time
    with emulate.EmulatedLink(rate_mbit=8, edge_cpu=1.0, tag="rate") as link:
        sink = link.cloud([sys.executable, "-c", (
            "import socket; s = socket.socket(); s.bind(('{}', 9000)); s.listen(1); c, _ = s.accept()\n"
            "n = 0\nwhile True:\n    b = c.recv(65536)\n    if not b: break\n    n += len(b)\nprint(n)").format(
                link.cloud_ip)], stdout=subprocess.PIPE, universal_newlines=True)
        time.sleep(0.5)
        started = time.time()
        source = link.edge([sys.executable, "-c", (
            "import socket; s = socket.create_connection(('{}', 9000)); s.sendall(b'x' * 2000000); s.close()").format(
                link.cloud_ip)])
        source.wait(60)
        received = int(sink.communicate(timeout=60)[0])
        seconds = time.time() - started
    assert received == 2000000
    mbit = received * 8 / seconds / 1e6
    assert 5 < mbit < 9, mbit  # 8 Mbit/s asked, minus startup
    del socket



def test_adaptive_edge_moves_to_a_late_split_when_the_link_slows(seed_segments, labelled_npz, tmp_path):
    """1000 Mbit/s, then 0.5 Mbit/s mid-run: the edge moves to a late split within seconds; back at 1000 Mbit/s,
    its probes see the link recover and it moves back.  Every sample once, correct; one run, no retry.

    The drop is one where the answer does not hang on the edge's profile.  At 1 Mbit/s split 0 takes about
    120 ms (80 ms on the wire, 40 ms of tail) and split 22 what the edge's profile says, which a half-core
    edge measured at 82 ms alone and at 117 ms in a whole-suite run: there the edge rightly stayed at split 0
    (2026-12-01).  Before that, the emulated link's bucket held 16 KiB at every rate, so a 12 KiB request saw
    about 1.7 Mbit/s, and split 0 (97 ms predicted) was within the 15% margin of split 22 (86 ms).  At
    0.5 Mbit/s split 0 takes about 200 ms, far beyond either profile."""
    _adaptive_run(seed_segments, labelled_npz, tmp_path / "run")


def _adaptive_run(seed_segments, labelled_npz, tmp_path):
    import json
    import subprocess
    import threading
    import time
    tmp_path.mkdir()
    store = tmp_path / "store"
    store.mkdir()
    for entry in os.listdir(str(seed_segments)):  # every split and the segments, read in place
        if entry.startswith("resnet50-"):
            os.symlink(str(seed_segments / entry), str(store / entry))
    data, labels = labelled_npz
    report = tmp_path / "r.json"
    with emulate.EmulatedLink(rate_mbit=1000, edge_cpu=0.5, tag="adapt") as link:
        server, address = emulate.start_server(link, str(store), "--threads", "1")
        edge = link.edge([sys.executable, emulate.CLI, "run-edge", "--cloud", address, "--cache", str(tmp_path / "edge"),
                          "--threads", "1", "--split", "auto", "--adaptive", "--dataset", "npz:" + data,
                          "--limit", "500", "--report", str(report)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
        lines = []
        reader = threading.Thread(target=lambda: [lines.append((time.time(), l)) for l in edge.stderr])
        reader.start()
        deadline = time.time() + 300
        while not any("planned split" in l for _, l in lines) and edge.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(3)  # the planned head is loaded and some samples run at full rate
        link.set_rate(0.5)
        dropped = time.time()
        while not any("switched from split 0" in l for _, l in lines) and edge.poll() is None \
                and time.time() < dropped + 30:
            time.sleep(0.05)
        time.sleep(1)
        link.set_rate(1000)
        restored = time.time()
        out = edge.stdout.read()  # stderr is the reader thread's
        edge.wait(600)
        reader.join()
        server.terminate()
        server.wait(60)
    log = "".join(l for _, l in lines)
    assert edge.returncode == 0, log
    r = json.loads(report.read_text())
    assert r["n"] == 500 and r["predictions"] == labels.tolist(), log  # every sample once, correct
    assert r["plan"]["choice"]["split"] == 0, log  # a fast link ships the input to the cloud
    # a late split, or local (the whole model here as the chain of its segments, nothing on the slow link)
    late = [s for s in r["switches"] if s["to_split"] == "local" or s["to_split"] >= 20]
    assert late, "no switch to a late split (edge profile: {} ms for the whole model; transmission p50 {} ms): {}".format(
        _edge_profile_ms(tmp_path / "edge"), r["transmission_ms"]["p50"], log)
    assert "bandwidth now" in late[0]["reason"], log
    switched = [t for t, l in lines if "switched from split 0 to split" in l]
    assert switched and switched[0] - dropped < 5, "the switch came {} s after the drop: {}".format(
        round(switched[0] - dropped, 1) if switched else None, log)
    back = [t for t, l in lines if ("switched from split 2" in l or "switched from split local" in l) and t > restored]
    assert back and back[0] - restored < 15 and r["switches"][-1]["to_split"] in range(4), log  # found by probes
    assert r["probes"] >= 1 and len(r["switches"]) <= 4, log  # no flapping
    assert not [f for f in r["fetches"] if f["split"] >= 20], log  # chained from the cached segments, not fetched
    assert "Switches: split 0 -> " in out


def _edge_profile_ms(cache):
    """The whole model's time in the edge's cached profile (what split 22 is predicted at), or None."""
    import glob
    import json
    for path in glob.glob(str(cache / ".profiles" / "*.json")):
        with open(path) as f:
            return round(sum(json.load(f)["segment_ms"]), 1)
    return None


def test_ctrl_c_removes_namespaces_cgroup_and_processes(work, tmp_path):
    """bench/emulate.py interrupted while its link is up: `ip netns list`, the cgroup tree and the process
    table are back to what they were, and it exits non-zero."""
    import signal
    import subprocess
    import time

    def netns():
        return sorted(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines())

    def cgroups():
        return sorted(d for d in os.listdir(emulate.CGROUP_CPU) if d.startswith("edgesplit-"))

    before, groups = netns(), cgroups()
    # a background job inherits SIGINT ignored (POSIX), and Python then leaves it so: restore it, as a terminal has
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "bench", "emulate.py"), "--rates", "1000",
                             "--splits", "0,22", "--limit", "200", "--work", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while len(netns()) < len(before) + 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert len(netns()) >= len(before) + 2, "the link never came up: " + proc.stderr.read()
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    time.sleep(2)  # serve-cloud and plan are running in the namespaces
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert netns() == before and cgroups() == groups
    left = [pid for pid in children if os.path.exists("/proc/{}".format(pid))]
    assert not left, left
