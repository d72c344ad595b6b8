"""Profiles that go stale (runtime/edge/staleness.py): the pure comparison with injected figures, and a real
run-edge that finds its cached edge profile 3x too slow and measures it again."""
import glob
import json
import re

import pytest
from cloud_server import ServerProcess
from conftest import run_cli

from runtime.backends.profiling import ProfileCache, machine_load, read_profile
from runtime.edge.report import RunRecorder
from runtime.edge.staleness import STALE_MIN_MS, STALE_SHARE, drift, head_times, stale

EDGE = {"segment_ms": [10.0, 20.0, 30.0, 40.0]}
CLOUD = {"segment_ms": [1.0, 2.0, 3.0, 4.0]}


def test_a_figure_more_than_a_quarter_and_a_millisecond_off_its_prediction_is_stale():
    assert STALE_SHARE == 0.25 and STALE_MIN_MS == 1.0
    assert drift(3.0, 4.5) == pytest.approx(0.5) and drift(3.0, 1.5) == pytest.approx(-0.5)
    assert drift(0.0, 1.0) is None  # nothing predicted (split 0's head)
    assert stale(EDGE, 2, 30.0) == {} and stale(EDGE, 2, 37.0) == {}  # +23%: within
    assert stale(EDGE, 2, 39.0) == {"edge": (30.0, 39.0, pytest.approx(0.3))}
    assert stale(EDGE, 2, 10.0)["edge"][2] == pytest.approx(-2.0 / 3)  # a profile made on a busy machine: too slow
    assert stale(EDGE, 0, 5.0) == {}
    both = stale(EDGE, 2, 30.0, CLOUD, 14.0)  # the tail from point 2: 7 ms predicted
    assert list(both) == ["cloud"] and both["cloud"][:2] == (pytest.approx(7.0), 14.0)
    assert stale(EDGE, 2, 30.0, CLOUD, 7.5) == {}
    tiny = {"segment_ms": [0.017, 0.01]}  # a tiny head: its run's fixed costs per request triple it
    assert stale(tiny, 1, 0.052) == {}


def test_head_times_keep_the_final_split_and_the_clouds_answers():
    recorder = RunRecorder()
    recorder.records["edge_ms"] = [1.0, 2.0, 5.0, 6.0, 40.0]
    recorder.timeline = [(0.0, 1), (0.1, 1), (0.2, 3), (0.3, 3), (0.4, 3)]
    recorder.paths = [("cloud", None)] * 4 + [("hedged", "deadline")]  # the last was finished on the edge
    assert head_times(recorder, 3) == [5.0, 6.0]
    assert head_times(recorder, 1) == [1.0, 2.0]


def test_profiles_say_when_and_under_what_load_and_old_ones_still_load(tmp_path):
    load = machine_load()
    assert set(load) == {"load_1min", "cpu_count"}
    assert load["cpu_count"] is None or load["cpu_count"] >= 1
    old = {"key": {"model": "m", "backend": "onnx"}, "segment_ms": [1.0], "points": [{}, {}]}
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert read_profile(str(tmp_path / "old.json")) == old
    assert ProfileCache(str(tmp_path)).find(model="m", backend="onnx") == old
    assert ProfileCache(str(tmp_path)).find(model="m", backend="torchscript") is None


HEAVY, HEAVY_ID, SPLIT = "tiny_models:heavy", "tiny_models-heavy", 5  # split 5: both convolutions on the edge


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A cloud holding split 5 and the segments of a model whose head takes milliseconds, not microseconds (the
    tiny classifier's head is as short as a request's fixed costs, which the profile does not count)."""
    from exporter.bundle import export_bundle
    from exporter.options import ExportOptions
    from exporter.segments import export_segments
    root = tmp_path_factory.mktemp("heavy")
    export_bundle(HEAVY, str(SPLIT), ExportOptions(random_init=True, out_dir=str(root)))
    export_segments(HEAVY, ExportOptions(random_init=True, out_dir=str(root)))
    srv = ServerProcess(root)
    yield srv
    assert srv.stop() == 0, srv.log_text()


def test_run_edge_re_profiles_a_cached_profile_that_is_3x_off(server, tmp_path):
    cache = tmp_path / "cache"
    assert run_cli("plan", "--cloud", server.address, "--model", HEAVY_ID, "--cache", cache).returncode == 0
    path, = glob.glob(str(cache / ".profiles" / "*.json"))
    profile = read_profile(path)
    assert profile["measured_unix"] > 0 and "load_1min" in profile and "cpu_count" in profile
    wrong = dict(profile, segment_ms=[3 * t for t in profile["segment_ms"]])  # as if measured on a busy edge
    with open(path, "w") as f:
        json.dump(wrong, f)
    before = sum(wrong["segment_ms"][:SPLIT])
    proc = run_cli("run-edge", "--cloud", server.address, "--model", HEAVY_ID, "--cache", cache, "--split", SPLIT,
                   "--dataset", "synthetic", "--limit", 40)
    assert proc.returncode == 0, proc.stderr
    line = re.search(r"run-edge: the edge's profile predicts ([0-9.]+) ms for the head of split 5, this run "
                     r"measured ([0-9.]+) ms \(([-+][0-9]+)%\); re-profiling \(\d+ segments\)", proc.stderr)
    assert line, proc.stderr
    assert float(line.group(1)) == pytest.approx(before, abs=1e-3)
    measured = float(line.group(2))
    fresh = read_profile(path)
    after = sum(fresh["segment_ms"][:SPLIT])
    # the fresh profile is nearer the run than the one 3x off (how near depends on this machine's load)
    assert abs(after - measured) < abs(before - measured) and after < before / 2
    assert fresh["measured_unix"] >= profile["measured_unix"]
