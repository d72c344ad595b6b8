"""The edge's power meter (runtime/edge/power.py) against sysfs trees laid out as each driver lays them out.

Each fixture is a real directory tree in tmp_path, as the kernel shows it: the i2c driver's directory holds a
symlink per device (``<bus>-<addr>``) to the device under ``sys/devices``, with the JetPack 4 ``ina3221x`` iio files
or the JetPack 5 hwmon ``ina3221`` files; RAPL zones under ``sys/class/powercap`` with sub-zones and the MMIO
duplicate.  A writer thread changes the values (atomically, as sysfs never shows half a value) while the Sampler
reads them, and the measured average is checked against the time-weighted average of what was written.  Then
real ``cli.py run-edge`` processes against a real serve-cloud with ``--sysfs-root`` pointing at a fixture: the energy
line and JSON, a rail removed mid-run, a named source that is not there, and a run without any source.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import pytest
from cloud_server import ServerProcess
from conftest import REPO, SEED_REPORT, TINY_ID, run_cli
from sysfs_trees import AGX_RAILS, agx_xavier, jp5_device, nano, put, rapl, tx2, xavier_nx

from runtime.edge import power
from runtime.errors import UserError

ENERGY_LINE = re.compile(r"^energy: (\d+\.\d{3}) mJ/sample, avg power (\d+) mW \(idle (\d+) mW\), "
                         r"source (\S+) rail (\S+)$")


# -- opening -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("board,source,rail,expected_mw", [
    (nano, "ina3221x", "POM_5V_IN", 2000.0),
    (tx2, "ina3221x", "VDD_IN", 4000.0),
    (xavier_nx, "ina3221", "VDD_IN", 3000.0),
    (agx_xavier, "ina3221", "GPU+CPU+SOC+CV+VDDRQ+SYS5V", 19 * (50 + 60 + 70 + 10 + 20) + 5 * 300.0),
])
def test_each_board_opens_with_its_total_rail_or_the_sum(tmp_path, board, source, rail, expected_mw):
    board(tmp_path)
    for asked in ("auto", "ina3221"):
        meter = power.open_meter(asked, str(tmp_path))
        assert meter.measured and (meter.source, meter.rail) == (source, rail)
        assert meter.named == (asked != "auto")
        assert meter.read() == pytest.approx(expected_mw)


def test_nc_channels_and_the_shunt_sum_are_skipped(tmp_path):
    """AGX Orin's second monitor has NC channels; channel 7 is the sum of shunt voltages, never a rail."""
    jp5_device(tmp_path, "1-0040", 1, [("VDD_GPU_SOC", 5000, 400), ("VDD_CPU_CV", 5000, 200),
                                       ("VIN_SYS_5V0", 5000, 300)])
    jp5_device(tmp_path, "1-0041", 2, [("NC", 0, 0), ("VDDQ_VDD2_1V8AO", 5000, 100), ("NC", 0, 0)])
    meter = power.open_meter("auto", str(tmp_path))
    assert meter.rail == "VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0+VDDQ_VDD2_1V8AO"
    assert meter.read() == pytest.approx(5 * (400 + 200 + 300 + 100))


def test_jp4_without_in_power_uses_voltage_times_current(tmp_path):
    files = nano(tmp_path, total=2500)
    os.remove(str(files["POM_5V_IN"]))
    assert power.open_meter("ina3221", str(tmp_path)).read() == pytest.approx(2500.0)


def test_a_sysfs_root_may_be_the_sys_directory_itself(tmp_path):
    """--sysfs-root DIR takes the directory holding sys/ or, as a container may mount it, the sysfs itself."""
    nano(tmp_path)
    assert power.open_meter("ina3221", str(tmp_path / "sys")).rail == "POM_5V_IN"
    assert power.sys_dir(str(tmp_path)) == str(tmp_path / "sys")


def test_rapl_adds_packages_never_subzones_or_mmio_and_prefers_psys(tmp_path):
    rapl(tmp_path, zones=(("intel-rapl:0", "package-0", 10), ("intel-rapl:1", "package-1", 20)))
    meter = power.open_meter("auto", str(tmp_path))
    assert (meter.source, meter.rail, meter.read()) == ("rapl", "package-0+package-1", (10.0, 20.0))
    put(tmp_path / "sys/class/powercap/intel-rapl:2/name", "psys")
    put(tmp_path / "sys/class/powercap/intel-rapl:2/energy_uj", 30)
    put(tmp_path / "sys/class/powercap/intel-rapl:2/max_energy_range_uj", 1000)
    assert power.open_meter("rapl", str(tmp_path)).rail == "psys"


def test_auto_prefers_ina3221_over_rapl(tmp_path):
    nano(tmp_path)
    rapl(tmp_path)
    assert power.open_meter("auto", str(tmp_path)).source == "ina3221x"
    assert power.open_meter("rapl", str(tmp_path)).source == "rapl"


def test_no_source_auto_is_not_measured_and_a_named_one_is_an_error(tmp_path):
    meter = power.open_meter("auto", str(tmp_path))
    assert not meter.measured
    assert "no INA3221 power monitor" in meter.reason and "no RAPL package counter" in meter.reason
    assert "jtop not tried" in meter.reason
    assert power.open_meter("none", str(tmp_path)).reason == "--power none"
    for source, said in (("ina3221", "no INA3221 power monitor"), ("rapl", "no RAPL package counter"),
                         ("jtop", "jtop")):
        with pytest.raises(UserError) as info:
            power.open_meter(source, str(tmp_path))
        message = str(info.value)
        assert message.startswith("--power {}: ".format(source)) and said in message and "\n" not in message
        assert "--power auto" in message


def test_jtop_without_jetson_stats_is_said(tmp_path):
    try:
        import jtop  # noqa: F401
        pytest.skip("jetson-stats is installed here: its absence cannot be shown")
    except ImportError:
        pass
    with pytest.raises(UserError, match="jtop is not installed"):
        power.open_meter("jtop")


@pytest.mark.parametrize("value,said", [("abc", "not a number ('abc')"), ("", "not a number ('')")])
def test_a_malformed_value_is_found_when_opening(tmp_path, value, said):
    files = nano(tmp_path)
    put(files["POM_5V_IN"], value)
    meter = power.open_meter("auto", str(tmp_path))
    assert not meter.measured and "rail POM_5V_IN" in meter.reason and said in meter.reason
    with pytest.raises(UserError, match=re.escape(said)):
        power.open_meter("ina3221", str(tmp_path))


def test_an_unreadable_file_is_found_when_opening(tmp_path):
    """A file that cannot be read (here a directory where the value should be, which root cannot read either)."""
    files = xavier_nx(tmp_path)
    os.remove(str(files["VDD_IN"]))
    os.mkdir(str(files["VDD_IN"]))
    with pytest.raises(UserError, match="rail VDD_IN: .*curr1_input: Is a directory"):
        power.open_meter("ina3221", str(tmp_path))
    rapl(tmp_path / "x86")
    counter = tmp_path / "x86/sys/class/powercap/intel-rapl:0/energy_uj"
    os.remove(str(counter))
    os.mkdir(str(counter))
    meter = power.open_meter("auto", str(tmp_path / "x86"))
    assert not meter.measured and "RAPL unreadable" in meter.reason and "root-only" in meter.reason


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files whatever their mode")
def test_a_counter_without_read_permission_is_said(tmp_path):
    files = rapl(tmp_path)
    os.chmod(str(files["package-0"]), 0o200)
    with pytest.raises(UserError, match="Permission denied.*root-only"):
        power.open_meter("rapl", str(tmp_path))


# -- sampling while a writer changes the values ------------------------------------------------------------------

class Writer(threading.Thread):
    """Applies each phase (a function writing the files) and holds it ``hold`` seconds; ``times`` says when."""

    def __init__(self, phases, hold):
        threading.Thread.__init__(self, daemon=True)
        self.phases, self.hold, self.times = phases, hold, []

    def run(self):
        for phase in self.phases:
            phase()
            self.times.append(time.perf_counter())
            time.sleep(self.hold)


def sample_phases(meter, phases, values, hold=0.15, interval=0.01):
    """Sample ``meter`` while a Writer applies ``phases[1:]`` (phase 0 is written before); return (window, the
    time-weighted average of ``values`` over the sampled span)."""
    phases[0]()
    sampler = power.Sampler(meter, interval)
    started = time.perf_counter()
    sampler.start()
    writer = Writer(phases[1:], hold)
    writer.start()
    writer.join()
    window = sampler.stop()
    stopped = time.perf_counter()
    edges = [started] + writer.times + [stopped]
    energy = sum(v * (b - a) for v, a, b in zip(values, edges[:-1], edges[1:]))
    return window, energy / (stopped - started)


def test_ina3221x_average_follows_the_written_total(tmp_path):
    files = nano(tmp_path)
    meter = power.open_meter("ina3221", str(tmp_path))
    totals = [1000, 3000, 1500, 4000, 2000]

    def phase(mw):
        def write():
            put(files["POM_5V_IN"], mw)
            put(files["POM_5V_GPU"], mw * 7)  # other rails change too, and are not counted
        return write
    window, expected = sample_phases(meter, [phase(v) for v in totals], totals)
    assert window.problem is None and window.samples > 20
    assert window.avg_power_mw == pytest.approx(expected, rel=0.06)
    assert window.energy_mj == pytest.approx(expected * window.duration_s, rel=0.06)


def test_tx2_reads_vdd_in_on_the_second_device(tmp_path):
    files = tx2(tmp_path)
    meter = power.open_meter("auto", str(tmp_path))
    totals = [4000, 6000, 5000]
    window, expected = sample_phases(meter, [lambda v=v: put(files["VDD_IN"], v) for v in totals], totals)
    assert window.problem is None and window.avg_power_mw == pytest.approx(expected, rel=0.06)


def test_hwmon_power_is_voltage_times_current_while_currents_change(tmp_path):
    files = xavier_nx(tmp_path)
    meter = power.open_meter("auto", str(tmp_path))
    currents = [400, 900, 600, 1200]
    window, expected = sample_phases(meter, [lambda c=c: put(files["VDD_IN"], c) for c in currents],
                                     [5.0 * c for c in currents])
    assert window.problem is None and window.avg_power_mw == pytest.approx(expected, rel=0.06)


def test_agx_xavier_sums_every_rail_of_both_devices(tmp_path):
    files = agx_xavier(tmp_path)
    meter = power.open_meter("auto", str(tmp_path))
    rest = sum(mv * ma for rail, mv, ma in AGX_RAILS[0] + AGX_RAILS[1] if rail not in ("GPU", "CV")) / 1000.0
    gpu = [50, 500, 200]
    cv = [10, 100, 300]

    def phase(g, c):
        def write():
            put(files["GPU"], g)
            put(files["CV"], c)
        return write
    window, expected = sample_phases(meter, [phase(g, c) for g, c in zip(gpu, cv)],
                                     [rest + 19 * g + 19 * c for g, c in zip(gpu, cv)])
    assert window.problem is None and window.avg_power_mw == pytest.approx(expected, rel=0.06)


def test_rapl_counter_differences_across_a_wrap(tmp_path):
    """The counter starts 0.3 J below its range and runs at 6 W: it wraps about 50 ms in; the energy stays whole."""
    wrap = 262143328850
    start = wrap - 300000
    files = rapl(tmp_path, zones=(("intel-rapl:0", "package-0", start),), wrap=wrap)
    meter = power.open_meter("rapl", str(tmp_path))
    mw = 6000.0
    stop = threading.Event()
    t0 = time.perf_counter()

    def count():
        while not stop.is_set():
            put(files["package-0"], int(start + mw * 1000 * (time.perf_counter() - t0)) % wrap)  # uJ
            time.sleep(0.002)
    writer = threading.Thread(target=count, daemon=True)
    writer.start()
    sampler = power.Sampler(meter, 0.01).start()
    time.sleep(0.6)
    window = sampler.stop()
    stop.set()
    writer.join()
    assert int(open(str(files["package-0"])).read()) < start  # it did wrap
    assert window.problem is None and window.avg_power_mw == pytest.approx(mw, rel=0.05)


def test_a_rail_that_disappears_mid_run_ends_the_window_with_why(tmp_path):
    files = nano(tmp_path)
    meter = power.open_meter("auto", str(tmp_path))
    sampler = power.Sampler(meter, 0.01).start()
    time.sleep(0.1)
    shutil.rmtree(str(files["POM_5V_IN"].parent.parent))  # the whole device goes (an unbound driver)
    time.sleep(0.15)
    window = sampler.stop()
    assert window.problem.startswith("rail POM_5V_IN: ") and "No such file or directory" in window.problem
    idle = power.Window("ina3221x", "POM_5V_IN", duration_s=0.5, energy_mj=1000.0, samples=25)
    summary = power.energy_summary(window, idle, 10)
    assert not summary["measured"] and summary["mj_per_sample"] is None
    assert summary["reason"].startswith("rail POM_5V_IN") and summary["reason"].endswith("(measured part)")


def test_a_value_that_turns_malformed_mid_run_ends_the_window(tmp_path):
    files = xavier_nx(tmp_path)
    meter = power.open_meter("auto", str(tmp_path))
    sampler = power.Sampler(meter, 0.01).start()
    time.sleep(0.05)
    put(files["VDD_IN"], "garbage")
    time.sleep(0.15)
    window = sampler.stop()
    assert "rail VDD_IN" in window.problem and "not a number ('garbage')" in window.problem


def test_idle_baseline_is_subtracted_per_sample(tmp_path):
    """1000 mW while idle, 3000 mW while measuring 10 samples over ~0.6 s: 2000 mW x 0.6 s / 10 above idle."""
    files = nano(tmp_path, total=1000)
    energy = power.RunEnergy(power.open_meter("auto", str(tmp_path)), idle_s=0.4, interval_s=0.01)
    energy.before()
    put(files["POM_5V_IN"], 3000)
    energy.start()
    time.sleep(0.6)
    energy.stop()
    s = energy.summary(10)
    assert s["measured"] and (s["source"], s["rail"]) == ("ina3221x", "POM_5V_IN")
    assert s["idle_power_mw"] == pytest.approx(1000, rel=0.01)
    assert s["avg_power_mw"] == pytest.approx(3000, rel=0.02)
    assert s["mj_per_sample"] == pytest.approx(2000 * s["duration_s"] / 10, rel=0.03)
    assert s["gross_mj_per_sample"] == pytest.approx(3000 * s["duration_s"] / 10, rel=0.02)
    assert set(s) >= {"source", "rail", "avg_power_mw", "idle_power_mw", "mj_per_sample"}


def test_energy_below_the_idle_baseline_is_floored_at_zero():
    idle = power.Window("rapl", "package-0", duration_s=1.0, energy_mj=2000.0, samples=50)
    run = power.Window("rapl", "package-0", duration_s=2.0, energy_mj=3000.0, samples=100)
    s = power.energy_summary(run, idle, 4)
    assert (s["avg_power_mw"], s["idle_power_mw"], s["mj_per_sample"], s["gross_mj_per_sample"]) == \
        (1500.0, 2000.0, 0.0, 750.0)
    assert not power.energy_summary(run, idle, 0)["measured"]


def test_real_rapl_where_this_machine_exposes_it():
    try:
        meter = power.open_meter("rapl")
    except UserError as exc:
        pytest.skip("no readable RAPL here: {}".format(exc))
    window = power.measure_idle(meter, 0.3)
    assert window.problem is None and window.samples > 5 and window.avg_power_mw > 0


# -- run-edge ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_server(tiny_bundles):
    srv = ServerProcess(tiny_bundles)
    yield srv
    assert srv.stop() == 0, srv.log_text()


def edge_args(server, cache, data, *extra):
    return ["run-edge", "--cloud", server.address, "--artifacts", cache, "--model", TINY_ID, "--split", 3,
            "--dataset", "npz:" + data] + list(extra)


def test_run_edge_reports_energy_from_the_sysfs_root(tiny_server, tiny_bundles, tiny_labelled_npz, tmp_path):
    """The Nano's tree, its total rail varied by a writer thread between 1800 and 2200 mW all through the run."""
    files = nano(tmp_path / "host")
    stop = threading.Event()

    def vary():
        i = 0
        while not stop.is_set():
            put(files["POM_5V_IN"], (1800, 2200)[i % 2])
            i += 1
            time.sleep(0.003)
    writer = threading.Thread(target=vary, daemon=True)
    writer.start()
    report = tmp_path / "r.json"
    try:
        proc = run_cli(*edge_args(tiny_server, tiny_bundles, tiny_labelled_npz[0], "--limit", 40, "--report", report,
                                  "--sysfs-root", tmp_path / "host"))
    finally:
        stop.set()
        writer.join()
    assert proc.returncode == 0, proc.stderr
    assert SEED_REPORT.match(proc.stdout), proc.stdout  # the seed's four lines stay first
    last = proc.stdout.strip().splitlines()[-1]
    match = ENERGY_LINE.match(last)
    assert match, proc.stdout
    assert match.group(4, 5) == ("ina3221x", "POM_5V_IN")
    assert 1800 <= int(match.group(2)) <= 2200 and 1800 <= int(match.group(3)) <= 2200
    energy = json.loads(report.read_text())["energy"]
    assert energy["measured"] and (energy["source"], energy["rail"]) == ("ina3221x", "POM_5V_IN")
    assert 1800 <= energy["avg_power_mw"] <= 2200 and 1800 <= energy["idle_power_mw"] <= 2200
    assert energy["mj_per_sample"] >= 0 and match.group(1) == "{:.3f}".format(energy["mj_per_sample"])
    assert energy["gross_mj_per_sample"] == pytest.approx(energy["avg_power_mw"] * energy["duration_s"] / 40)


def test_run_edge_without_a_power_source_says_not_measured(tiny_server, tiny_bundles, tiny_labelled_npz, tmp_path):
    empty = tmp_path / "bare"
    empty.mkdir()
    for extra, said in ((("--sysfs-root", empty), "no INA3221 power monitor"), (("--power", "none"), "--power none")):
        report = tmp_path / "r.json"
        proc = run_cli(*edge_args(tiny_server, tiny_bundles, tiny_labelled_npz[0], "--limit", 8, "--report", report,
                                  *extra))
        assert proc.returncode == 0, proc.stderr
        assert SEED_REPORT.match(proc.stdout), proc.stdout
        last = proc.stdout.strip().splitlines()[-1]
        assert last.startswith("energy: not measured (") and said in last, proc.stdout
        energy = json.loads(report.read_text())["energy"]
        assert energy["measured"] is False and said in energy["reason"]
        assert energy["mj_per_sample"] is None and energy["avg_power_mw"] is None


def test_run_edge_with_a_named_source_that_is_not_there_stops_before_running(tmp_path):
    """Nothing connects: the cloud named does not exist, and the error is about the power source."""
    empty = tmp_path / "bare"
    empty.mkdir()
    for source, said in (("ina3221", "no INA3221 power monitor in"), ("rapl", "no RAPL package counter in")):
        proc = run_cli("run-edge", "--cloud", "127.0.0.1:9", "--split", 3, "--dataset", "synthetic",
                       "--power", source, "--sysfs-root", empty, timeout=60)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and proc.stdout == ""
        assert len(lines) == 1 and lines[0].startswith("error: --power {}: ".format(source)) and said in lines[0]


@pytest.mark.parametrize("named", [True, False])
def test_run_edge_when_the_rail_disappears_mid_run(tiny_server, tiny_bundles, tiny_labelled_npz, tmp_path, named):
    """The measured part starts at --start-at (the idle baseline just before); the device is removed half a second
    into it.  The report is written and says why; the exit is non-zero only where --power named the source."""
    files = nano(tmp_path / "host")
    report = tmp_path / "r.json"
    start_at = time.time() + 6.0
    args = edge_args(tiny_server, tiny_bundles, tiny_labelled_npz[0], "--limit", 40, "--interval-ms", 50,
                     "--start-at", "{:.3f}".format(start_at), "--report", report, "--sysfs-root", tmp_path / "host",
                     "--power", "ina3221" if named else "auto")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests", "fixtures")]))
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "cli.py")] + [str(a) for a in args], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    time.sleep(max(0.0, start_at + 0.5 - time.time()))
    shutil.rmtree(str(files["POM_5V_IN"].parent.parent))
    out, err = proc.communicate(timeout=120)
    assert SEED_REPORT.match(out), out + err
    last = out.strip().splitlines()[-1]
    assert last.startswith("energy: not measured (rail POM_5V_IN: ") and "No such file or directory" in last, out
    energy = json.loads(report.read_text())["energy"]
    assert energy["measured"] is False and energy["reason"].startswith("rail POM_5V_IN")
    assert json.loads(report.read_text())["n"] == 40  # nothing lost
    final = err.strip().splitlines()[-1]
    if named:
        assert proc.returncode == 1 and final.startswith("error: --power ina3221: the energy was not measured: rail")
    else:
        assert proc.returncode == 0 and final.startswith("run-edge: energy not measured: rail POM_5V_IN"), err
