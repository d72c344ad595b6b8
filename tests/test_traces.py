"""bench/traces.py: the link simulation behind its oracles, its bad input, and one short real run."""
import json
import os
import subprocess
import sys
import types

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


# one opportunity a millisecond, but none in (200, 600]: a 400 ms outage in a 1 s trace
OUTAGE = tracelink.Trace([t for t in range(1, 1001) if not 200 < t <= 600], 1000)
FAST = tracelink.Trace.constant(1000.0)
# split 0: 10 ms head, 5 ms tail, 10 packets up, nothing down; the whole model on the edge in 40 ms
COSTS = {0: (10.0, 5.0, 15000, 0), traces.LOCAL: (40.0, 0.0, 0, 0)}


def test_a_local_choice_leaves_the_link_alone_but_waits_for_the_edge():
    # local: 40 ms from its start; the next frame waits for the edge, not the link
    assert traces.simulate(OUTAGE, FAST, lambda i, t: traces.LOCAL, COSTS, 3, 30.0, 10.0) == [40.0, 50.0, 60.0]
    plan = [0, 0, traces.LOCAL, traces.LOCAL, 0, 0]
    lat = traces.simulate(OUTAGE, FAST, lambda i, t: plan[i], COSTS, 6, 100.0, 10.0)
    # split 0 on the idle link: head to 10, packets at 11-20, 10 ms there, 5 ms tail, 10 ms back = 45;
    # at 400 the head is done at 410 and the outage holds the packets to 601-610: answered at 635, and the frame
    # released at 500 starts then: packets 646-655, answered 680
    assert lat == [45.0, 45.0, 40.0, 40.0, 235.0, 180.0]


def test_hedged_simulation_by_hand():
    lat, paths = traces.simulate_hedged(OUTAGE, FAST, 0, COSTS, 8, 100.0, 10.0, 100.0)
    # the rest of the model on the edge is 40 - 10 = 30 ms, so a frame gives up at release + 70; the one released
    # at 200 would be answered at 635 (the outage): finished on the edge at 270 + 30, the link busy until 635, so
    # the frames released at 300 to 600 run the whole model on the edge; at 700 the link is free again
    assert paths == ["cloud", "cloud", "hedged", "local", "local", "local", "local", "cloud"]
    assert lat == [45.0, 45.0, 100.0, 40.0, 40.0, 40.0, 40.0, 45.0]
    # a deadline shorter than the rest of the model: never waited for past the head, every frame hedged
    lat, paths = traces.simulate_hedged(FAST, FAST, 0, COSTS, 3, 100.0, 10.0, 20.0)
    assert paths == ["hedged"] * 3 and lat == [40.0] * 3
    # a deadline nothing misses: the plain simulation
    lat, paths = traces.simulate_hedged(OUTAGE, FAST, 0, COSTS, 8, 100.0, 10.0, 1000.0)
    assert paths == ["cloud"] * 8
    assert lat == traces.simulate(OUTAGE, FAST, lambda i, t: 0, COSTS, 8, 100.0, 10.0)


def test_the_oracles_choose_local_through_an_outage(tmp_path):
    # 12 Mbit/s for 2 s (a packet a millisecond), 0.12 Mbit/s for 2 s (a packet per 100 ms), 12 again
    up = tracelink.load_trace(_csv(tmp_path, [(0, 12), (2, 0.12), (4, 12)]))
    costs = {0: (10.0, 5.0, 15000, 0), traces.LOCAL: (60.0, 0.0, 0, 0)}  # split 0: 45 ms on a fast link
    chosen, lat = traces.oracle_interval(up, FAST, costs, 60, 100.0, 10.0)
    assert chosen == [0] * 20 + [traces.LOCAL] * 20 + [0] * 20
    assert lat == [45.0] * 20 + [60.0] * 20 + [45.0] * 20
    k, static = traces.oracle_static(up, FAST, costs, 60, 100.0, 10.0)
    assert k == traces.LOCAL and static == [60.0] * 60


def _run(mean, **more):
    return dict({"mean_ms": mean, "p50_ms": mean - 1, "p95_ms": mean + 1, "deadline_hit": 0.5, "samples": 4,
                 "lost": 0, "switches": 0, "wrong": 0, "local": 0}, **more)


def test_repetitions_give_the_median_of_their_means_and_keep_each():
    reps = [_run(30.0, switches=3), _run(10.0, switches=1), _run(20.0, switches=2)]
    combined = traces.combine_reps(reps)
    assert combined["mean_ms"] == 20.0 and combined["p95_ms"] == 21.0 and combined["switches"] == 2
    assert combined["reps"] == reps
    assert traces.median_rep(reps) == 2 and traces.median_rep(reps[:2]) == 1  # the lower middle of two
    assert traces.combine_reps(reps[:2])["mean_ms"] == 20.0
    assert traces.combine_reps([reps[0]]) == reps[0]  # one run: its own figures, as without --repeat
    failed = traces.combine_reps([reps[0], {"error": "boom", "samples": 0, "lost": 4}, _run(9.0, lost=1)])
    assert "mean_ms" not in failed and failed["error"] == "boom" and failed["lost"] == 5


def test_repetitions_run_interleaved_and_report_the_median_run(monkeypatch, tmp_path):
    calls = []

    def one_run(trace, server, cache, data, labels, mode, rep, args, quota, work, reuse, counter):
        calls.append((mode, rep))
        mean = {0: 30.0, 1: 10.0, 2: 20.0}[rep] + (100 if mode == "local" else 0)
        return _run(mean), {"rep": rep, "mode": mode}

    monkeypatch.setattr(traces, "one_run", one_run)
    monkeypatch.setattr(traces, "cannot_carry", lambda trace, mode, *rest: "too big" if mode == "static:3" else None)
    args = types.SimpleNamespace(repeat=3, interval_ms=100.0, seconds=1.0)
    results, reports = traces.run_trace(FAST, None, None, None, [0] * 4, ["static:3", "static:0", "local"], args,
                                        None, str(tmp_path), None)
    assert calls == [("static:0", 0), ("local", 0), ("static:0", 1), ("local", 1), ("static:0", 2), ("local", 2)]
    assert list(results) == ["static:3", "static:0", "local"] and results["static:3"]["skipped"] == "too big"
    assert results["static:0"]["mean_ms"] == 20.0 and results["local"]["mean_ms"] == 120.0
    assert [r["mean_ms"] for r in results["local"]["reps"]] == [130.0, 110.0, 120.0]
    assert reports == {"static:0": {"rep": 2, "mode": "static:0"}, "local": {"rep": 2, "mode": "local"}}
    assert traces.report_path("w", "hedged:22", 0) == os.path.join("w", "hedged-22.json")
    assert traces.report_path("w", "hedged:22", 2) == os.path.join("w", "hedged-22.rep3.json")


def test_modes_and_what_they_run():
    assert traces.default_modes([0, 22]) == ["static:0", "static:22", "auto", "adaptive", "local", "hedged:adaptive"]
    assert traces.parse_modes(" local,hedged:22, hedged:auto,local", [0, 22]) == ["local", "hedged:22", "hedged:auto"]
    for bad in ("static:7", "hedged:7", "hedged:", "remote", " , "):
        with pytest.raises(ValueError):
            traces.parse_modes(bad, [0, 22])
    assert traces.split_flags("static:3", 150) == ["--split", "3"]
    assert traces.split_flags("local", 150) == ["--split", "local"]
    assert traces.split_flags("hedged:3", 120) == ["--split", "3", "--deadline-ms", "120"]
    assert traces.split_flags("hedged:adaptive", 150) == ["--split", "auto", "--adaptive", "--deadline-ms", "150"]
    argv = traces.edge_argv(None, "c", "d.npz", 5, ["--split", "local"], "r.json")
    assert "--cloud" not in argv and argv[argv.index("--split") + 1] == "local"
    assert traces.needed_splits(["local"]) == [22]
    assert traces.needed_splits(["static:3", "hedged:10"]) == [3, 10, 22]
    assert traces.needed_splits(["static:3", "hedged:auto"]) == list(range(23))
    assert traces.serves_locally("hedged:3") and traces.serves_locally("local")
    assert traces.serves_locally("adaptive") and traces.serves_locally("auto")  # they may choose local
    assert not traces.serves_locally("static:22")


def test_local_costs_come_from_the_local_run_else_split_22():
    def report(edge, local=0.0):
        return {"edge_ms": {"p50": edge}, "cloud_ms": {"p50": 5.0}, "queue_ms": {"p50": 1.0},
                "local_ms": {"p50": local}, "bytes_sent_per_sample": 100, "bytes_received_per_sample": 10}
    costs = traces.costs_from_runs({"static:22": report(50.0), "adaptive": report(9.0)})
    assert costs == {22: (50.0, 6.0, 100, 10), traces.LOCAL: (50.0, 0.0, 0, 0)}
    assert traces.costs_from_runs({"static:22": report(50.0), "local": report(44.0)})[traces.LOCAL][0] == 44.0
    assert traces.costs_from_runs({"local": report(0.0, local=47.0)})[traces.LOCAL][0] == 47.0


def test_the_table_compares_every_mode_with_the_best_static_split_or_local():
    results = {"static:0": _run(100.0), "static:22": _run(80.0, lost=1), "local": _run(50.0, local=4),
               "hedged:0": _run(40.0, local=1, paths={"cloud": {"requests": 3}, "hedged": {"requests": 1}}),
               "adaptive": _run(60.0), "oracle_static": _run(50.0, split="local"), "oracle_interval": _run(25.0)}
    ratios = traces.ratios(results)
    assert traces.best_mode(results) == "local" and traces.best_mode(results, local=False) == "static:0"
    assert ratios["adaptive"] == pytest.approx((1.2, 2.4)) and ratios["hedged:0"] == pytest.approx((0.8, 1.6))
    table = traces.format_table({"t": results}).splitlines()
    assert "vs best static or local" in table[0] and "median" not in table[0]
    assert table[4].startswith("| t | local **best static or local** | 50.0 |")
    assert table[5].startswith("| t | hedged:0 (cloud 3, hedged 1) | 40.0 |") and "| 0.80x | 1.60x |" in table[5]
    assert table[7].startswith("| t | oracle_static (local) |")
    results["local"]["reps"] = [_run(50.0)] * 3
    assert "mean ms (median of 3 runs)" in traces.format_table({"t": results})


def test_the_chart_draws_local_and_a_hedged_run_by_path(tmp_path):
    def report(split, lat, path=None):
        timeline = {"release_s": [0.0, 0.1, 0.2], "split": [split] * 3, "from_release_ms": lat}
        return {"timeline": dict(timeline, path=path) if path else timeline}
    reports = {"static:0": report(0, [50, 60, 70]), "adaptive": report(22, [40, 45, 50]),
               "local": report("local", [40, 41, 42]),
               "hedged:adaptive": report(22, [45, 160, 40], ["cloud", "hedged", "local"])}
    results = {m: _run(50.0) for m in reports}
    path = tmp_path / "t.png"
    traces.plot(str(path), FAST, results, reports, 1.0, 100.0, 150.0)
    assert path.stat().st_size > 10000
    assert traces.hedged_shown({"hedged:3": {}, "hedged:adaptive": {}}) == "hedged:adaptive"
    assert traces.hedged_shown({"hedged:3": {}}) == "hedged:3" and traces.hedged_shown({}) is None


@pytest.mark.parametrize("content,line", [("", None), ("0\n5\n-3\n", 3), ("1\nabc\n", 2), ("0\n0\n0\n", None)])
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
                        (["--modes", "static:7"], "--modes"), (["--modes", "hedged:7"], "--modes"),
        (["--repeat", "0"], "--repeat"), (["--hedge-ms", "0"], "--hedge-ms"),
        (["--weights", str(tmp_path / "none.pth")], "--weights")):
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


def _run_edge_hedges():
    """Whether this run-edge has --deadline-ms (hedged requests, and with them --split local)."""
    proc = subprocess.run([sys.executable, os.path.join(REPO, "cli.py"), "run-edge", "--help"],
                          capture_output=True, text=True, timeout=120)
    return "--deadline-ms" in proc.stdout


@pytest.mark.skipif(not _run_edge_hedges(), reason="run-edge has no --deadline-ms or --split local yet")
def test_a_short_run_of_local_and_hedged_modes(seed_weights, tmp_path):
    """local and hedged:22 beside static:22 over a 3 s trace with a dip: every sample answered correctly, each
    hedged request on one of the three paths, local answering every sample itself, the oracles and the hedged
    run's simulation computed."""
    trace = _csv(tmp_path, [(0, 8), (1, 0.05), (2, 8)], "dip.csv")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, SCRIPT, "--trace", trace, "--splits", "22", "--modes",
                           "static:22,local,hedged:22", "--seconds", "2", "--interval-ms", "250", "--edge-cpu", "0",
                           "--lead-s", "4", "--rtt-ms", "20", "--hedge-ms", "150", "--weights", seed_weights,
                           "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())["dip"]
    assert set(results) == {"static:22", "local", "hedged:22", "oracle_static", "oracle_interval"}
    for mode in ("static:22", "local", "hedged:22"):
        r = results[mode]
        assert r["samples"] == 8 and r["lost"] == 0 and r["wrong"] == 0, (mode, r)
        assert "simulated_ms" in r, mode
    assert results["local"]["local"] == 8 and results["static:22"]["local"] == 0
    paths = results["hedged:22"]["paths"]
    assert set(paths) <= {"cloud", "hedged", "local"} and sum(p["requests"] for p in paths.values()) == 8
    assert results["hedged:22"]["local"] == sum(paths[p]["requests"] for p in ("hedged", "local") if p in paths)
    assert "vs best static or local" in proc.stdout and "| dip | hedged:22 (" in proc.stdout
    assert (out / "dip.png").stat().st_size > 10000
