"""`plan --link-profile FILE` on real processes: serve-cloud with the tests' tiny model, a small CSV trace."""
import json

from cloud_server import ServerProcess
from conftest import TINY_ID, run_cli

from runtime.bundle.schema import split_order


def test_plan_over_a_link_profile_gives_expected_and_p95_and_chooses_by_either(tiny_bundles, tmp_path):
    trace = tmp_path / "link.csv"
    trace.write_text("seconds,mbit\n" + "".join("{},{}\n".format(k, 0.05 if k == 9 else 50) for k in range(10)))
    bad = tmp_path / "bad.csv"
    bad.write_text("seconds,mbit\n0,5\n1,-2\n")
    server = ServerProcess(tiny_bundles)
    try:
        base = ("plan", "--cloud", server.address, "--model", TINY_ID, "--cache", tmp_path / "c", "--rtt", "1",
                "--link-profile", trace)
        plans = {}
        for objective in ("latency", "p95"):
            proc = run_cli(*base + ("--objective", objective, "--json"))
            assert proc.returncode == 0, proc.stderr
            plans[objective] = json.loads(proc.stdout)
        table = run_cli(*base)
        refused = run_cli(*base[:-1] + (bad,))
    finally:
        assert server.stop() == 0, server.log_text()
    network = plans["latency"]["network"]
    assert network["source"].startswith("link profile: 10 samples") and len(network["samples_mbps"]) == 10
    for objective, figure in (("latency", "expected_ms"), ("p95", "p95_ms")):
        served = [r for r in plans[objective]["rows"] if r["served"]]
        assert all(r["p95_ms"] >= r["expected_ms"] - 1e-9 for r in served)
        best = min(served, key=lambda r: (r[figure], split_order(r["split"])))
        assert plans[objective]["choice"]["split"] == best["split"], objective
    assert table.returncode == 0 and "| expected ms | p95 ms |" in table.stdout
    assert refused.returncode != 0 and "bad.csv line 3" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
