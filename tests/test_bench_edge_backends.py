"""bench/edge_backends.py at its smallest: the tiny model's head, one round, both loads, every variant."""
import json
import os
import subprocess
import sys

from conftest import REPO, TINY_ID

BENCH = os.path.join(REPO, "bench", "edge_backends.py")


def test_one_round_prints_the_table_and_writes_the_figures(tiny_bundles, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, BENCH, "--store", str(tiny_bundles), "--model", TINY_ID, "--splits", "4",
                           "--rounds", "1", "--runs", "5", "--warmup", "2", "--busy", "1", "--out", str(out),
                           "--interpreters", "cloud", "--variants",
                           "onnx,torchscript,torchscript-before,torchscript+OMP_WAIT_POLICY=PASSIVE"],
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout.splitlines()
    assert table[0].startswith("| interpreter | split | load | onnx ms p50 / p99 | torchscript ms p50 / p99 (x onnx)")
    rows = [l for l in table if l.startswith("| Python 3.")]
    assert len(rows) == 4 and {"quiet", "1 busy loops"} == set(l.split(" | ")[2] for l in rows[:2])
    assert "[8/8]" in proc.stderr  # progress, one line per run
    result = json.loads((out / "edge_backends.json").read_text())
    figures = {(f["load"], f["variant"]): f for f in result["figures"]}
    assert len(figures) == 8
    assert figures[("quiet", "torchscript")]["optimised"] == "frozen"  # torch 2.x's way
    assert figures[("quiet", "torchscript-before")]["optimised"] is None
    for f in figures.values():
        assert 0 < f["median_ms"] <= f["p99_ms"] and f["cpu_ms_per_sample"] > 0
    parity = result["parity"][0]["max_rel_diff"]
    assert set(parity) == {"torchscript", "torchscript-before", "torchscript+OMP_WAIT_POLICY=PASSIVE"}
    assert max(parity.values()) < 1e-5
    assert (out / "edge_backends.png").stat().st_size > 1000 and (out / "edge_backends.md").exists()


def test_an_unknown_variant_is_refused(tmp_path):
    proc = subprocess.run([sys.executable, BENCH, "--variants", "onnx,tensorrt", "--out", str(tmp_path)], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert proc.returncode != 0 and "unknown variant or load: tensorrt" in proc.stderr
