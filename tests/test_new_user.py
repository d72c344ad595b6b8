"""What a new user met (issue 32, items 2, 3 and 5), command by command.

* Bad input is found before expensive work: the dataset, the data dir, the split and the model are checked
  before anything is sent to the cloud or computed; the refusal is one line, and nothing is left behind.
* Measured work is kept: a run stopped by SIGINT or by a cloud that went away writes its report of the samples
  done, marked partial; a sweep prints the splits it measured and names those that failed.
* ``--split`` and ``--splits`` take a point's name, resolved by the rule ``export`` uses.

Real ``cli.py`` subprocesses against real ``serve-cloud`` processes, on the tiny 10-class model
(tests/fixtures/tiny_models.py: points 0=input, 1=stem.0, 2=stem, 3=add, 4=relu, 5=pool, 6=head.0, 7=head).
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest
from cloud_server import FIXTURES, ServerProcess
from conftest import REPO, TINY, TINY_ID, run_cli, tiny_bundle

from runtime import launch
from runtime.bundle.manifest import load_manifest
from runtime.bundle.schema import resolve_split
from runtime.errors import UserError

# How long a refusal of local input may take.  cli.py starts in 0.5-1.5 s here (numpy, onnxruntime, click) and the
# checks add at most a STATUS and one HELLO on loopback; 30 s leaves room for a loaded 2-core machine and is still
# below what the user waited (46 s for sweep, 11.9 s for run-edge --split 99).  That no export, fetch or profile
# ran is shown by what is left on both sides (the store, the cache, the cloud's log), not by this bound.
QUICK_S = 30
SEGMENTS = TINY_ID + "-segments"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"
SAMPLES = 2000
# a frame every 10 ms: the 2000 samples of a run take 20 s, so a signal sent on reading the 210th sample's line
# (at about 2 s) lands long before the last
INTERVAL_MS = 10


def a_closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return "127.0.0.1:{}".format(s.getsockname()[1])


def timed(*args, **kwargs):
    """run_cli, and the seconds it took."""
    started = time.monotonic()
    proc = run_cli(*args, **kwargs)
    return proc, time.monotonic() - started


def the_error(proc, code=1):
    """The one line on stderr, which says ``error:`` once, of a command that exited with ``code``."""
    assert proc.returncode == code and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0].count("error:") == 1, proc.stderr
    return lines[0]


def copy_bundles(tiny_bundles, root, *names):
    """A directory holding copies of the tiny model's bundles ``names`` (splits, or ``SEGMENTS``)."""
    root.mkdir()
    for name in names:
        source = tiny_bundles / SEGMENTS if name == SEGMENTS else tiny_bundle(tiny_bundles, name)
        shutil.copytree(str(source), str(root / source.name))
    return root


def stopped_log(server):
    """Stop ``server`` (cleanly) and return its log."""
    assert server.stop() == 0, server.log_text()
    return server.log_text()


def edge(*args):
    """A ``cli.py`` process whose output is read as it comes (unbuffered, with the tests' fixtures importable)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join([REPO, FIXTURES]))
    return subprocess.Popen(launch.cli_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True, env=env, cwd=REPO)


def read_until(stream, predicate, seen):
    """Read ``stream`` line by line into ``seen`` until a line meets ``predicate`` (True), or it ends (False)."""
    for line in stream:
        seen.append(line)
        if predicate(line, seen):
            return True
    return False


def after_predictions(proc, count):
    """Read run-edge --verbose's stdout until ``count`` samples are shown: the lines read."""
    seen = []
    found = read_until(proc.stdout, lambda line, lines: sum(l.startswith("Prediction") for l in lines) >= count,
                       seen)
    assert found, "".join(seen) + proc.stderr.read()
    return seen


@pytest.fixture(scope="module")
def cloud(tiny_bundles):
    """A cloud that holds the tiny model at every split, and its segments; it exports nothing."""
    srv = ServerProcess(tiny_bundles)
    yield srv
    assert srv.stop() == 0, srv.log_text()


@pytest.fixture()
def offline():
    try:
        socket.getaddrinfo("www.cs.toronto.edu", 443)
    except OSError:
        return
    pytest.skip("this machine is online: the command would download CIFAR-100")


# ---------------------------------------------------------------- item 2: bad input found before expensive work

def test_sweep_without_cifar100_fails_before_any_export_and_leaves_no_data_dir(offline, tmp_path):
    """`sweep` with the default dataset, cifar100, absent: the cloud (which exports on demand) was asked for its
    segments, profiled, and an empty data/ was left; now the dataset is looked for first."""
    (tmp_path / "store").mkdir()
    (tmp_path / "work").mkdir()
    srv = ServerProcess(tmp_path / "store", "--model", TINY, "--random-init")
    try:
        proc, took = timed("sweep", "--cloud", srv.address, "--model", TINY_ID, "--cache", tmp_path / "cache",
                           cwd=str(tmp_path / "work"))
    finally:
        log = stopped_log(srv)
    line = the_error(proc)
    assert "cifar100 is not in data" in line and CIFAR100_URL in line, line
    assert took < QUICK_S, took
    assert os.listdir(str(tmp_path / "work")) == [] and not (tmp_path / "cache").exists()  # no data/, no cache
    assert os.listdir(str(tmp_path / "store")) == [] and "exporting" not in log and "event=connect" not in log


def test_run_edge_with_a_data_dir_that_is_not_there_fetches_nothing_and_creates_nothing(offline, cloud, tmp_path):
    nope = tmp_path / "nope-dir"
    proc, took = timed("run-edge", "--cloud", cloud.address, "--model", TINY_ID, "--split", 4, "--cache",
                       tmp_path / "cache", "--data-dir", nope)
    line = the_error(proc)
    assert "cifar100 is not in {}".format(nope) in line and CIFAR100_URL in line, line
    assert took < QUICK_S, took
    assert not nope.exists() and not (tmp_path / "cache").exists()  # no data dir made, no head fetched


def test_run_edge_split_99_is_refused_before_the_cloud_exports_anything(tiny_bundles, tmp_path):
    """The cloud exports on demand and holds split 4: the edge, knowing nothing of the model, learns its 8 points
    from the manifest in the WELCOME for split 4, not by asking for an export of split 99."""
    store = copy_bundles(tiny_bundles, tmp_path / "store", 4)
    srv = ServerProcess(store, "--model", TINY, "--random-init")
    try:
        proc, took = timed("run-edge", "--cloud", srv.address, "--model", TINY_ID, "--split", 99, "--cache",
                           tmp_path / "cache", "--dataset", "synthetic")
    finally:
        log = stopped_log(srv)
    assert the_error(proc) == "error: split 99 is out of range; valid split points are 0..7 (see `cli.py layers`)"
    assert took < QUICK_S, took
    assert os.listdir(str(store)) == [tiny_bundle(tiny_bundles, 4).name] and "exporting" not in log
    assert not (tmp_path / "cache").exists()
    # where the edge's cache holds a bundle of the model, it knows the range without asking the cloud at all
    cache = copy_bundles(tiny_bundles, tmp_path / "cached", 4)
    proc, took = timed("run-edge", "--cloud", a_closed_port(), "--model", TINY_ID, "--split", 99, "--cache", cache,
                       "--dataset", "synthetic")
    assert the_error(proc) == "error: split 99 is out of range; valid split points are 0..7 (see `cli.py layers`)"
    assert took < QUICK_S, took


def test_a_split_the_cloud_neither_holds_nor_exports_is_refused_before_any_request(tiny_bundles, tmp_path):
    """A cloud that holds split 4 only and exports nothing: split 5 (the model has it) is refused with what the
    cloud holds and how to get the rest, before the edge asks for it."""
    store = copy_bundles(tiny_bundles, tmp_path / "store", 4)
    srv = ServerProcess(store)
    try:
        proc, took = timed("run-edge", "--cloud", srv.address, "--model", TINY_ID, "--split", 5, "--cache",
                           tmp_path / "cache", "--dataset", "synthetic")
    finally:
        log = stopped_log(srv)
    assert the_error(proc) == (
        "error: --split 5: the cloud {} holds {} at split 4 only and exports no others; export it on the cloud "
        "(`cli.py export --model {} --split K`), or start serve-cloud there with --model {} to export splits on "
        "demand".format(srv.address, TINY_ID, TINY_ID, TINY_ID))
    assert took < QUICK_S, took
    assert "split=5" not in log and not (tmp_path / "cache").exists()


def test_where_nothing_knows_the_range_the_clouds_refusal_says_error_once(tmp_path):
    """An empty store exporting on demand and an empty cache: only the export can tell that split 99 does not
    exist, and its refusal, relayed from the exporter through the cloud, says "error:" once."""
    (tmp_path / "store").mkdir()
    srv = ServerProcess(tmp_path / "store", "--model", TINY, "--random-init")
    try:
        proc = run_cli("run-edge", "--cloud", srv.address, "--model", TINY_ID, "--split", 99, "--cache",
                       tmp_path / "cache", "--dataset", "synthetic")
    finally:
        stopped_log(srv)
    line = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and line.count("error:") == 1, proc.stderr
    assert "export of {} split 99 on the cloud failed: split 99 is out of range".format(TINY) in line, line


def test_without_model_two_models_held_are_a_refusal_not_a_guess(tiny_bundles, tmp_path):
    """The cloud holds the tiny model and exports resnet50 on demand: `run-edge --split 28` without --model asked
    it to export resnet50's split 28; now it says which models there are."""
    store = copy_bundles(tiny_bundles, tmp_path / "store", 4)
    srv = ServerProcess(store, "--model", "resnet50", "--random-init")
    try:
        proc, took = timed("run-edge", "--cloud", srv.address, "--split", 28, "--cache", tmp_path / "cache",
                           "--dataset", "synthetic")
    finally:
        log = stopped_log(srv)
    line = the_error(proc)
    assert "no --model given" in line and "several models: resnet50 (cloud), {} (cloud)".format(TINY_ID) in line
    assert line.endswith("pass one of them with --model"), line
    assert took < QUICK_S, took
    assert "exporting" not in log and "event=hello" not in log and os.listdir(str(store)) == [
        tiny_bundle(tiny_bundles, 4).name]


# ---------------------------------------------------------------- item 3: measured work is kept

def test_a_run_interrupted_by_sigint_writes_its_samples_marked_partial_and_exits_130(cloud, tmp_path):
    report = tmp_path / "r.json"
    proc = edge("run-edge", "--cloud", cloud.address, "--model", TINY_ID, "--split", 4, "--cache", tmp_path / "c",
                "--dataset", "synthetic", "--limit", SAMPLES, "--interval-ms", INTERVAL_MS, "--verbose", "--report",
                report)
    seen = after_predictions(proc, 210)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    shown = sum(l.startswith("Prediction") for l in seen + out.splitlines(True))
    assert proc.returncode == 130, err
    r = json.loads(report.read_text())
    assert r["partial"] is True and r["partial_reason"] == "interrupted (SIGINT)" and r["samples_planned"] == SAMPLES
    assert 210 <= r["n"] == shown == len(r["predictions"]) == len(r["timeline"]["split"]) < SAMPLES
    assert "Partial run: {} of {} samples, then interrupted (SIGINT)".format(r["n"], SAMPLES) in out
    assert "Throughput: " in out and "({} samples in {} requests;".format(r["n"], r["n"]) in out
    assert err.strip().splitlines()[-1] == "error: interrupted after {} of {} samples; {} holds them, marked " \
                                           "partial".format(r["n"], SAMPLES, report)


def test_a_run_whose_cloud_went_away_writes_its_samples_marked_partial(tiny_bundles, tmp_path):
    srv = ServerProcess(tiny_bundles)
    report = tmp_path / "r.json"
    proc = edge("run-edge", "--cloud", srv.address, "--model", TINY_ID, "--split", 4, "--cache", tmp_path / "c",
                "--dataset", "synthetic", "--limit", SAMPLES, "--interval-ms", INTERVAL_MS, "--verbose", "--report",
                report, "--reconnect-timeout", 1)
    try:
        seen = after_predictions(proc, 138)
    finally:
        stopped_log(srv)  # SIGTERM: it answers what has arrived and goes; nothing listens after it
    out, err = proc.communicate(timeout=120)
    shown = sum(l.startswith("Prediction") for l in seen + out.splitlines(True))
    assert proc.returncode == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: the cloud at {} has been unreachable".format(srv.address)), err
    r = json.loads(report.read_text())
    assert r["partial"] is True and "unreachable" in r["partial_reason"] and r["samples_planned"] == SAMPLES
    assert 138 <= r["n"] == shown == len(r["predictions"]) < SAMPLES
    assert "{} of {} samples done".format(r["n"], SAMPLES) in last
    assert "Partial run: {} of {} samples, then the cloud at".format(r["n"], SAMPLES) in out


def test_sweep_splits_3_99_4_keeps_and_prints_the_splits_it_measured(tmp_path):
    """Nothing knows the model's range (an empty store exporting on demand, an empty cache), so split 99 fails
    only when the cloud tries to export it: the sweep goes on to split 4, prints and writes the rows of 3 and 4,
    and exits 1 naming 99."""
    (tmp_path / "store").mkdir()
    srv = ServerProcess(tmp_path / "store", "--model", TINY, "--random-init")
    try:
        proc = run_cli("sweep", "--cloud", srv.address, "--model", TINY_ID, "--cache", tmp_path / "cache",
                       "--splits", "3,99,4", "--dataset", "synthetic", "--limit", 8, "--power", "none", "--csv",
                       tmp_path / "s.csv")
    finally:
        stopped_log(srv)
    assert proc.returncode == 1, proc.stderr
    rows = [l.split("|")[1].strip() for l in proc.stdout.splitlines() if l.startswith("| ") and "split" not in l]
    assert rows == ["3", "4"], proc.stdout
    assert [l.split(",")[0] for l in (tmp_path / "s.csv").read_text().splitlines()[1:]] == ["3", "4"]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: sweep: split 99 failed: cloud: export of {} split 99".format(TINY)), last
    assert "out of range" in last and last.endswith("; the table above has splits 3, 4") and \
        last.count("error:") == 1, last


def test_sweep_with_a_split_the_model_does_not_have_measures_nothing(cloud, tiny_bundles, tmp_path):
    """Where the range is known (the cache holds the model's segments, as any plan or sweep leaves them), split 99
    is refused before anything is profiled or measured."""
    cache = copy_bundles(tiny_bundles, tmp_path / "cache", SEGMENTS)
    proc, took = timed("sweep", "--cloud", cloud.address, "--model", TINY_ID, "--cache", cache, "--splits", "3,99",
                       "--dataset", "synthetic", "--power", "none")
    assert the_error(proc) == "error: split 99 is out of range; valid split points are 0..7 (see `cli.py layers`)"
    assert took < QUICK_S and proc.stdout == "", took
    assert sorted(os.listdir(str(cache))) == [SEGMENTS]  # no head fetched, no profile made


def test_an_interrupted_sweep_prints_the_splits_it_measured_and_exits_130(tmp_path):
    """SIGINT while the cloud exports split 4 on demand (a wait of seconds, signalled on its NOTICE): split 3's
    row is printed, and the last line names split 4."""
    (tmp_path / "store").mkdir()
    srv = ServerProcess(tmp_path / "store", "--model", TINY, "--random-init")
    proc = edge("sweep", "--cloud", srv.address, "--model", TINY_ID, "--cache", tmp_path / "cache", "--splits",
                "3,4", "--dataset", "synthetic", "--limit", 8, "--power", "none")
    seen = []
    try:
        assert read_until(proc.stderr, lambda line, _: "exporting {} split 4".format(TINY_ID) in line, seen), \
            "".join(seen)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        stopped_log(srv)
    assert proc.returncode == 130, err
    rows = [l.split("|")[1].strip() for l in out.splitlines() if l.startswith("| ") and "split" not in l]
    assert rows == ["3"], out
    assert err.strip().splitlines()[-1] == ("error: sweep: split 4 failed: interrupted (SIGINT); the table above "
                                            "has split 3")


# ---------------------------------------------------------------- item 5: a point's name wherever a split is taken

def test_run_edge_and_sweep_take_a_points_name(cloud, tiny_bundles, tmp_path):
    """With the model's segments in the cache (what plan, profile and sweep leave there), every name resolves: a
    point's, its graph node's, and a module's that ends there."""
    cache = copy_bundles(tiny_bundles, tmp_path / "cache", SEGMENTS)
    points = load_manifest(str(cache / SEGMENTS))["points"]
    stem = next(p for p in points if p["name"] == "stem")
    assert stem["index"] == 2 and "stem.1" in stem["ends"]  # the ReLU that ends `stem` names it too
    for name, index in (("pool", 5), ("stem.1", 2), ("head_0", 6)):
        report = tmp_path / "{}.json".format(name)
        proc = run_cli("run-edge", "--cloud", cloud.address, "--model", TINY_ID, "--cache", cache, "--split", name,
                       "--dataset", "synthetic", "--limit", 4, "--report", report)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(report.read_text())["split"] == index
    proc = run_cli("sweep", "--cloud", cloud.address, "--model", TINY_ID, "--cache", cache, "--splits", "relu,head",
                   "--dataset", "synthetic", "--limit", 4, "--power", "none")
    assert proc.returncode == 0, proc.stderr
    rows = [l.split("|")[1].strip() for l in proc.stdout.splitlines() if l.startswith("| ") and "split" not in l]
    assert rows == ["4", "7"], proc.stdout


def test_an_unknown_name_is_one_line_listing_the_points_as_export_says_it(tiny_bundles, tmp_path):
    """The edge resolves names by the exporter's own function: the same line for the same mistake, before anything
    is sent (nothing listens at the cloud's address) or written."""
    cache = copy_bundles(tiny_bundles, tmp_path / "cache", SEGMENTS)
    proc, took = timed("run-edge", "--cloud", a_closed_port(), "--model", TINY_ID, "--cache", cache, "--split",
                       "pooll", "--dataset", "synthetic")
    line = the_error(proc)
    assert took < QUICK_S, took
    assert "'pooll' is not a valid split point" in line and "valid: 0=input, 1=stem.0, 2=stem, 3=add, 4=relu, " \
                                                           "5=pool, 6=head.0, 7=head" in line, line
    exported = run_cli("export", "--model", TINY, "--split", "pooll", "--random-init", "--artifacts",
                       tmp_path / "out")
    assert the_error(exported) == line
    assert not (tmp_path / "out").exists() or os.listdir(str(tmp_path / "out")) == []
    swept = run_cli("sweep", "--cloud", a_closed_port(), "--model", TINY_ID, "--cache", cache, "--splits",
                    "relu,pooll", "--dataset", "synthetic", "--power", "none")
    assert the_error(swept) == line and sorted(os.listdir(str(cache))) == [SEGMENTS]


def test_a_name_the_edge_cannot_resolve_says_what_it_knows_and_how_to_learn_the_rest(cloud, tiny_bundles,
                                                                                      tmp_path):
    """A cache with the head of split 4 only knows that point's name (and that there are 8): `relu` runs, `pool`
    is refused in one line that says what is known and how to learn the rest, with nothing fetched."""
    cache = copy_bundles(tiny_bundles, tmp_path / "cache", 4)
    proc = run_cli("run-edge", "--cloud", cloud.address, "--model", TINY_ID, "--cache", cache, "--split", "relu",
                   "--dataset", "synthetic", "--limit", 4, "--report", tmp_path / "r.json")
    assert proc.returncode == 0 and json.loads((tmp_path / "r.json").read_text())["split"] == 4, proc.stderr
    line = the_error(run_cli("run-edge", "--cloud", cloud.address, "--model", TINY_ID, "--cache", cache, "--split",
                             "pool", "--dataset", "synthetic"))
    assert "--split pool: not an index, and not a name among the points of {} that the edge knows (4=relu of 8, " \
           "from its cache {})".format(TINY_ID, cache) in line, line
    assert "`cli.py profile --cloud {} --model {} --cache {} --out-json profile.json`".format(
        cloud.address, TINY_ID, cache) in line, line
    assert sorted(os.listdir(str(cache))) == [tiny_bundle(tiny_bundles, 4).name]


def test_one_rule_for_what_a_split_names():
    points = [{"index": 0, "name": "input", "node": "x", "ends": []},
              {"index": 1, "name": "conv1", "node": "conv1_2", "ends": ["conv1", "conv1.2"]},
              {"index": 2, "name": "fc", "node": "fc", "ends": ["fc"]}]
    assert [resolve_split(v, points) for v in ("0", "conv1", "conv1_2", "conv1.2", "fc", 2, " 1 ")] == \
        [0, 1, 1, 1, 2, 2, 1]
    assert resolve_split("1.2", points) == resolve_split("1.2", points, cuts=["1.1", "1.2"]) == "1.2"
    with pytest.raises(UserError, match=r"'1\.3' is not a valid split point"):
        resolve_split("1.3", points, cuts=["1.1", "1.2"])  # cuts known: only those
    with pytest.raises(UserError, match=r"^split 3 is out of range; valid split points are 0\.\.2"):
        resolve_split("3", points)
    with pytest.raises(UserError, match="valid: 0=input, 1=conv1, 2=fc"):
        resolve_split("conv", points)


def test_demo_split_takes_the_seeds_names(tmp_path):
    """The demo's --split by name, looked up in `cli.py layers` (the seed's ResNet-50 numbering: avg_pool is 20)."""
    from runtime.demo import split_index
    assert split_index("20") == 20 and split_index("4.4") == "4.4"
    assert split_index("avg_pool") == 20 and split_index("conv5_x") == 19
