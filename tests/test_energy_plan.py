"""Energy as an objective: the planner's choice on synthetic profiles where the answer is known (pure), then
`profile --power`, `plan --objective energy`, `run-edge --split auto --objective energy` and `sweep`'s mJ column on
real processes, the power read from a fixture sysfs tree in JetPack 4's ina3221x layout."""
import csv
import json
import os

import pytest
from cloud_server import ServerProcess
from conftest import TINY_ID, run_cli
from sysfs_trees import nano

from runtime.edge.planner import (
    DEFAULT_RADIO_NJ_PER_BYTE,
    FRAME_BYTES,
    at_cadence,
    choose,
    format_plan,
    predict,
    radio_cost,
    with_energy,
)
from runtime.errors import UserError

# 5 points: a cheap first segment shrinks the input 10x, the middle is expensive and large, the end is tiny.
POINTS = [{"index": i, "name": "p{}".format(i), "bytes_per_sample": b}
          for i, b in enumerate([40000, 4000, 200000, 2000, 40])]
EDGE_MS = [1.0, 30.0, 5.0, 5.0]
CLOUD_MS = [0.1, 3.0, 0.5, 0.5]
SEGMENT_MJ = [0.5, 30.0, 2.0, 1.0]  # edge energy before point k: 0, 0.5, 30.5, 32.5, 33.5 mJ
OUTPUT = 40


def rows_for(nj_per_byte, batch_size=1, interval_ms=0.0):
    rows = predict(POINTS, EDGE_MS, CLOUD_MS, rtt_ms=1.0, bandwidth_mbps=100.0, batch_size=batch_size,
                   output_bytes=OUTPUT)
    if interval_ms:
        rows = at_cadence(rows, interval_ms, 0.0, batch_size, OUTPUT)
    return with_energy(rows, SEGMENT_MJ, nj_per_byte, batch_size, OUTPUT)


def test_energy_is_the_heads_compute_plus_the_bytes_on_the_radio():
    rows = rows_for(2000.0, batch_size=4)
    for r in rows:
        k = r["split"]
        wire = 4 * (POINTS[k]["bytes_per_sample"] + OUTPUT) + 2 * FRAME_BYTES  # both ways, a frame each
        assert r["edge_mj"] == pytest.approx(sum(SEGMENT_MJ[:k]))
        assert r["radio_mj"] == pytest.approx(2000.0 * wire * 1e-6)
        assert r["energy_mj"] == pytest.approx(r["edge_mj"] + r["radio_mj"])
        assert r["mj_per_sample"] == pytest.approx(r["energy_mj"] / 4)


def test_a_cheap_radio_ships_early_an_expensive_one_computes_on_the_edge():
    # nearly free radio: send the input, compute nothing
    assert choose(rows_for(1.0), "energy")["split"] == 0
    # 100 nJ/byte: the input costs 4 mJ, a cheap segment (0.5 mJ) cuts the bytes 10x: the fewest bytes after
    # little compute
    assert choose(rows_for(100.0), "energy")["split"] == 1
    # 20000 nJ/byte (LTE at a low rate): even 4 KB costs 84 mJ, more than the whole model (33.5 mJ): all on the edge
    assert choose(rows_for(20000.0), "energy")["split"] == 4
    # latency still prefers the cloud's speed: the objectives differ on the same rows
    assert choose(rows_for(20000.0), "latency")["split"] == 1


def test_a_latency_cap_excludes_the_energy_best_split():
    rows = rows_for(20000.0)
    assert rows[4]["latency_ms"] > 40.0 and rows[1]["latency_ms"] < 10.0
    capped = choose(rows, "energy", max_latency_ms=30.0)
    assert capped["split"] == 1  # splits 2-4 are predicted over 30 ms; of 0 and 1, split 1 sends 10x fewer bytes
    assert capped["latency_ms"] <= 30.0
    assert choose(rows, "energy", max_latency_ms=1000.0)["split"] == 4  # a loose cap changes nothing
    assert choose(rows, "throughput", max_latency_ms=30.0)["latency_ms"] <= 30.0  # any objective takes the cap


def test_no_split_under_the_cap_says_the_fastest_prediction():
    rows = rows_for(2000.0)
    fastest = min(rows, key=lambda r: r["latency_ms"])
    with pytest.raises(UserError) as err:
        choose(rows, "energy", max_latency_ms=1.0)
    message = str(err.value)
    assert "\n" not in message and "--max-latency-ms 1" in message
    assert "split {}".format(fastest["split"]) in message and "{:.3f} ms".format(fastest["latency_ms"]) in message
    # at a cadence the cap is on the latency from release; a split that cannot keep up has none
    with pytest.raises(UserError) as err:
        choose(rows_for(2000.0, interval_ms=1.0), "energy", max_latency_ms=5.0)
    assert "a queue that only grows" in str(err.value)


def test_a_profile_without_energy_is_refused():
    rows = predict(POINTS, EDGE_MS, CLOUD_MS, 1.0, 100.0, output_bytes=OUTPUT)
    with pytest.raises(UserError) as err:
        choose(rows, "energy")
    assert "profile --power" in str(err.value)
    assert "mJ/sample" not in format_plan(rows, choose(rows), {"rtt_ms": 1.0, "bandwidth_mbps": 100.0}, "latency")
    energy_rows = rows_for(100.0)
    table = format_plan(energy_rows, choose(energy_rows, "energy"), {"rtt_ms": 1.0, "bandwidth_mbps": 100.0},
                        "energy", 100.0)
    assert "| mJ/sample |" in table and "radio 100 nJ/byte" in table and "mJ/sample" in table.splitlines()[-1]


def test_the_default_radio_cost_is_huangs_wifi_model_at_20_mbit():
    # P = 283.17 mW/Mbps x 20 Mbit/s + 132.86 mW = 5796.26 mW; 8 bits x P / t = 2318.5 nJ per byte
    assert radio_cost("wifi", 20.0) == pytest.approx(8 * (283.17 * 20 + 132.86) / 20)
    assert DEFAULT_RADIO_NJ_PER_BYTE == pytest.approx(2318.5)
    assert radio_cost("lte", 6.0) == pytest.approx(8 * (438.39 * 6 + 1288.04) / 6)  # LTE's median uplink
    assert radio_cost("lte", 6.0) > 2 * radio_cost("wifi", 20.0)


# -- real processes --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sysfs(tmp_path_factory):
    """A Jetson Nano's INA3221 as JetPack 4 lays it out (tests/fixtures/sysfs_trees.py), drawing 12.5 W in all."""
    root = tmp_path_factory.mktemp("sysfs")
    nano(root, total=12500)
    return str(root)


@pytest.fixture(scope="module")
def server(tiny_bundles):
    srv = ServerProcess(tiny_bundles)
    yield srv
    assert srv.stop() == 0, srv.log_text()


def segments_dir(tiny_bundles):
    return os.path.join(str(tiny_bundles), TINY_ID + "-segments")


def test_profile_records_energy_per_segment_from_the_ina3221(tiny_bundles, sysfs, tmp_path):
    out = tmp_path / "edge.json"
    proc = run_cli("profile", "--segments", segments_dir(tiny_bundles), "--out", out, "--power", "ina3221",
                   "--sysfs-root", sysfs)
    assert proc.returncode == 0, proc.stderr
    profile = json.loads(out.read_text())
    n = len(profile["segment_ms"])
    assert len(profile["segment_mj"]) == n and all(mj >= 0 for mj in profile["segment_mj"])
    energy = profile["energy"]
    assert (energy["source"], energy["rail"]) == ("ina3221x", "POM_5V_IN")  # the module's total rail alone
    assert energy["idle_power_mw"] == pytest.approx(12500.0)  # 5000 mV x 2500 mA
    # a rail that reads the same while idle and running: nothing above idle, however long the window
    assert profile["segment_mj"] == pytest.approx([0.0] * n, abs=1e-9)
    assert energy["window_s"] >= 0.3 and len(energy["repetitions"]) == n and min(energy["repetitions"]) >= 1
    assert "0.000 mJ in all above an idle 12500 mW on POM_5V_IN (ina3221x)" in proc.stdout


def test_profile_without_a_meter_still_writes_a_profile(tiny_bundles, tmp_path):
    out = tmp_path / "edge.json"
    proc = run_cli("profile", "--segments", segments_dir(tiny_bundles), "--out", out, "--power", "auto",
                   "--sysfs-root", tmp_path)  # no sysfs there: auto finds no meter and says so
    assert proc.returncode == 0, proc.stderr
    assert "segment_mj" not in json.loads(out.read_text()) and "energy not measured" in proc.stderr
    proc = run_cli("profile", "--segments", segments_dir(tiny_bundles), "--out", out, "--power", "ina3221",
                   "--sysfs-root", tmp_path)  # a meter named that is not there: one line, before profiling
    assert proc.returncode != 0 and "--power ina3221" in proc.stderr and "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def timed_profile(tiny_bundles, tmp_path_factory):
    """A real profile of the tiny model's segments here, without energy (the synthetic energies go in per test)."""
    out = tmp_path_factory.mktemp("profile") / "edge.json"
    proc = run_cli("profile", "--segments", segments_dir(tiny_bundles), "--out", out, "--power", "none")
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text())


def with_segment_mj(profile, segment_mj, path):
    edited = dict(profile, segment_mj=segment_mj, energy={"source": "ina3221x", "rail": "POM_5V_IN",
                                                          "idle_power_mw": 1000.0})
    path.write_text(json.dumps(edited))
    return path


def plan_json(server, tmp_path, *args):
    proc = run_cli("plan", "--cloud", server.address, "--model", TINY_ID, "--cache", tmp_path / "c", "--bandwidth",
                   "100", "--rtt", "1", "--objective", "energy", "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_plan_objective_energy_takes_the_known_answer(server, timed_profile, tmp_path):
    n = len(timed_profile["segment_ms"])  # the tiny model: points send 3 KiB, 8 KiB (x4), 2 KiB (x2), 40 B
    free_compute = with_segment_mj(timed_profile, [0.0] * n, tmp_path / "free.json")
    plan = plan_json(server, tmp_path, "--edge-profile", free_compute)
    assert plan["choice"]["split"] == n  # compute costs nothing: send the 40 bytes of logits
    assert plan["energy"]["radio_nj_per_byte"] == pytest.approx(DEFAULT_RADIO_NJ_PER_BYTE)
    assert all(r["mj_per_sample"] is not None for r in plan["rows"])
    costly = with_segment_mj(timed_profile, [50.0] * n, tmp_path / "costly.json")
    assert plan_json(server, tmp_path, "--edge-profile", costly, "--radio-nj-per-byte", "1")["choice"]["split"] == 0
    # the last two segments are costly: the first point that sends 2 KiB (5) beats the input (3 KiB) and the logits
    late = with_segment_mj(timed_profile, [0.0] * (n - 2) + [50.0, 50.0], tmp_path / "late.json")
    plan = plan_json(server, tmp_path, "--edge-profile", late)
    assert plan["choice"]["split"] == n - 2 and plan["choice"]["bytes_per_sample"] == 2048
    proc = run_cli("plan", "--cloud", server.address, "--model", TINY_ID, "--cache", tmp_path / "c", "--bandwidth",
                   "100", "--rtt", "1", "--objective", "energy", "--edge-profile", late)
    assert proc.returncode == 0 and "mJ/sample |" in proc.stdout and "choice (energy): split {}".format(n - 2) in \
        proc.stdout
    proc = run_cli("plan", "--cloud", server.address, "--model", TINY_ID, "--cache", tmp_path / "c", "--bandwidth",
                   "100", "--rtt", "1", "--objective", "energy", "--edge-profile", late, "--max-latency-ms", "0.001")
    assert proc.returncode != 0 and "no split is predicted within --max-latency-ms 0.001" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_plan_objective_energy_without_energy_says_how_to_get_it(server, timed_profile, tmp_path):
    path = tmp_path / "timed.json"
    path.write_text(json.dumps(timed_profile))
    for args in (("--edge-profile", path), ("--power", "none")):
        proc = run_cli("plan", "--cloud", server.address, "--model", TINY_ID, "--cache", tmp_path / "c",
                       "--bandwidth", "100", "--rtt", "1", "--objective", "energy", *args)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "profile --power" in proc.stderr, proc.stderr
    assert "profiling" not in proc.stderr  # refused before profiling anything it could not use


def test_plan_and_run_edge_profile_the_energy_themselves(server, sysfs, tmp_path):
    cache = tmp_path / "cache"
    common = ("--cloud", server.address, "--model", TINY_ID, "--cache", cache, "--bandwidth", "100", "--rtt", "1",
              "--objective", "energy", "--power", "ina3221", "--sysfs-root", sysfs)
    proc = run_cli("plan", "--json", *common)
    assert proc.returncode == 0, proc.stderr
    assert "energy on POM_5V_IN (ina3221x)" in proc.stderr
    plan = json.loads(proc.stdout)
    last = len(plan["rows"]) - 2  # the last point (the local row follows it, not served: no whole model cached)
    assert plan["choice"]["split"] == last  # the fixture's rail is flat: no compute energy, the fewest bytes win
    report = tmp_path / "r.json"
    proc = run_cli("run-edge", "--split", "auto", "--dataset", "synthetic", "--limit", 5, "--report", report, *common)
    assert proc.returncode == 0, proc.stderr
    assert "profiling" not in proc.stderr  # the energy profile plan made was cached
    r = json.loads(report.read_text())
    assert r["split"] == last and r["plan"]["objective"] == "energy" and "mJ/sample" in proc.stderr
    proc = run_cli("run-edge", "--split", "auto", "--adaptive", "--dataset", "synthetic", "--limit", 5, *common)
    assert proc.returncode != 0 and "--adaptive re-plans for latency or throughput only" in proc.stderr


def test_sweep_has_an_mj_column_and_panel(server, sysfs, tmp_path):
    last = 7  # the tiny model's points: 0 (all on the cloud) .. 7 (all on the edge)
    proc = run_cli("sweep", "--cloud", server.address, "--model", TINY_ID, "--cache", tmp_path, "--splits",
                   "0,{}".format(last), "--dataset", "synthetic", "--limit", 8, "--power", "ina3221",
                   "--sysfs-root", sysfs, "--csv", tmp_path / "s.csv", "--png", tmp_path / "s.png")
    assert proc.returncode == 0, proc.stderr
    assert "mJ/sample (predicted) |" in proc.stdout
    rows = list(csv.DictReader(open(str(tmp_path / "s.csv"))))
    assert [int(r["split"]) for r in rows] == [0, last]
    # measured: the whole edge above idle per sample; the fixture's flat rail gives 0
    assert [float(r["mj_per_sample"]) for r in rows] == pytest.approx([0.0, 0.0], abs=1e-9)
    predicted = [float(r["predicted_mj"]) for r in rows]  # no compute energy: the radio's bytes alone
    assert predicted[0] > predicted[1] > 0
    png = (tmp_path / "s.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
