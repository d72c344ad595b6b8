"""bench/traces.py: the link simulation behind its oracles, its bad input, and one short real run."""
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "bench"))
import tracelink  # noqa: E402
import traces  # noqa: E402

SCRIPT = os.path.join(REPO, "bench", "traces.py")


def _csv(tmp_path, rows, name="t.csv"):
    path = tmp_path / name
    path.write_text("seconds,mbit\n" + "".join("{},{}\n".format(t, r) for t, r in rows))
    return str(path)


def test_simulation_charges_the_upload_at_the_trace_rate_and_queues_behind_late_samples(tmp_path):
    up = tracelink.Trace.constant(12.0)  # 12 Mbit/s: one 1500-byte opportunity a millisecond
    down = tracelink.Trace.constant(1000.0)
    costs = {0: (0.0, 0.0, 12000, 0), 22: (50.0, 0.0, 0, 0)}  # 12,000 bytes: 8 opportunities
    lat = traces.simulate(up, down, lambda i, t: 0, costs, 4, 200.0, 10.0)
    assert lat == pytest.approx([28.0] * 4, abs=1.5)  # 8 ms upload + 2 x 10 ms delay
    lat = traces.simulate(up, down, lambda i, t: 0, costs, 4, 5.0, 10.0)  # released faster than served
    assert lat == pytest.approx([28.0, 51.0, 74.0, 97.0], abs=3.0)  # each waits for the one before
    assert traces.simulate(up, down, lambda i, t: 22, costs, 3, 100.0, 10.0) == pytest.approx([70.0] * 3, abs=1.0)


def test_per_second_oracle_follows_a_step_in_the_rate_and_beats_every_static_split(tmp_path):
    up = tracelink.load_trace(_csv(tmp_path, [(0, 10), (3, 0.5), (6, 10), (9, 10)]))
    down = tracelink.Trace.constant(1000.0)
    costs = {0: (0.0, 5.0, 12288, 400), 22: (50.0, 0.0, 400, 400)}
    n = 90  # 9 s at 100 ms
    k, static = traces.oracle_static(up, down, costs, n, 100.0, 5.0)
    chosen, best = traces.oracle_interval(up, down, costs, n, 100.0, 5.0)
    assert chosen[:30] == [0] * 30 and chosen[30:60] == [22] * 30 and chosen[60:] == [0] * 30
    assert sum(best) < sum(static)
    only0 = traces.simulate(up, down, lambda i, t: 0, costs, n, 100.0, 5.0)
    only22 = traces.simulate(up, down, lambda i, t: 22, costs, n, 100.0, 5.0)
    assert sum(static) == pytest.approx(min(sum(only0), sum(only22)))


@pytest.mark.parametrize("content,line", [("", None), ("0\n5\n3\n", 3), ("1\nabc\n", 2), ("0\n0\n0\n", None)])
def test_a_bad_trace_is_one_line_naming_the_file_and_leaves_nothing(content, line, tmp_path):
    bad = tmp_path / "bad.up"
    bad.write_text(content)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, SCRIPT, "--trace", str(bad), "--edge-cpu", "0", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.up" in lines[0], proc.stderr
    if line:
        assert "line {}".format(line) in lines[0], lines[0]
    assert not out.exists()


def test_bad_flags_are_refused_before_anything_runs(tmp_path):
    good = _csv(tmp_path, [(0, 1)])
    for flags, word in ((["--splits", "3,x"], "--splits"), (["--splits", "30"], "--splits"),
                        (["--modes", "static:7"], "--modes"), (["--weights", str(tmp_path / "none.pth")], "--weights")):
        proc = subprocess.run([sys.executable, SCRIPT, "--trace", good, "--edge-cpu", "0", "--out",
                               str(tmp_path / "o")] + flags, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and word in proc.stderr, (flags, proc.stderr)
        assert not (tmp_path / "o").exists()


def test_a_short_run_answers_every_sample_and_writes_the_results(seed_weights, tmp_path):
    """Two static splits over a 6 s trace that drops from 8 to 0.5 Mbit/s: every sample answered correctly,
    results.json shaped as documented, the simulation near the measured latency, a PNG."""
    trace = _csv(tmp_path, [(0, 8), (3, 0.5), (6, 0.5)], "step.csv")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, SCRIPT, "--trace", trace, "--splits", "0,22", "--modes",
                           "static:0,static:22", "--seconds", "5", "--interval-ms", "250", "--edge-cpu", "0",
                           "--lead-s", "4", "--rtt-ms", "20", "--weights", seed_weights, "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())["step"]
    assert set(results) == {"static:0", "static:22", "oracle_static", "oracle_interval"}
    for mode, r in results.items():
        assert {"mean_ms", "p50_ms", "p95_ms", "deadline_hit", "samples", "lost", "switches"} <= set(r), mode
        assert r["samples"] == 20 and r["lost"] == 0 and 0 <= r["deadline_hit"] <= 1
    for mode in ("static:0", "static:22"):
        r = results[mode]
        assert r["wrong"] == 0 and r["late_start_s"] < 0.5
        assert 0.5 < r["simulated_ms"] / r["mean_ms"] < 2.0, r
    # split 0 sends 12 KiB: at 0.5 Mbit/s that is 200 ms a sample against 250 ms between samples
    assert results["static:0"]["p95_ms"] > 150
    assert results["oracle_interval"]["mean_ms"] <= results["oracle_static"]["mean_ms"] + 1e-6
    assert "| step | static:0" in proc.stdout
    assert (out / "step.png").stat().st_size > 10000
    # again for split 22 alone, the rest from the first run's reports (same trace and settings)
    first = (out / "step" / "static-0.json").read_text()
    proc = subprocess.run([sys.executable, SCRIPT, "--trace", trace, "--splits", "0,22", "--modes", "static:22",
                           "--reuse", "--seconds", "5", "--interval-ms", "250", "--edge-cpu", "0", "--lead-s", "4",
                           "--rtt-ms", "20", "--weights", seed_weights, "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "static:0: reusing" in proc.stderr and "] static:22 (5 s of trace" in proc.stderr, proc.stderr
    assert "] static:0 (" not in proc.stderr and "] auto (" not in proc.stderr, proc.stderr  # nothing else ran
    assert (out / "step" / "static-0.json").read_text() == first
    again = json.loads((out / "results.json").read_text())["step"]
    assert again["static:0"]["mean_ms"] == results["static:0"]["mean_ms"] and again["static:22"]["samples"] == 20
    assert "auto" not in again and "adaptive" not in again
