"""Scale-out for real: three Triton servers (``cli.py serve-triton``, real tritonservers) behind nginx running
deploy/nginx.conf (tests/balancer.py), and eight ``run-edge --cloud grpc://BALANCER`` processes of 200 requests
each.  Every reply must be correct and none lost or counted twice (each edge's report: its 200 predictions equal
its own shuffled labels), every server must take a share, and with one server SIGKILLed mid-run the same must
hold: the balancer stops sending to it, and each edge whose request died with it reconnects and sends it again.

Skipped, with the reason, where nvidia-pytriton or nginx is not installed.
"""
import json
import subprocess
import time

import pytest
from balancer import Balancer
from balancer import unavailable as no_balancer
from conftest import REPO, TINY_ID, tiny_bundle
from test_triton_serve import edge_argv, statistics
from triton_server import TritonProcess
from triton_server import unavailable as no_triton

from runtime.cloud.triton import TritonOptions, export_triton

REASON = no_triton() or no_balancer()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

EDGES, REQUESTS, SERVERS = 8, 200, 3
NAME = "{}-s5".format(TINY_ID)


@pytest.fixture(scope="module")
def fleet_repo(tiny_bundles, tmp_path_factory):
    repo = tmp_path_factory.mktemp("fleet-repo")
    export_triton(str(tiny_bundle(tiny_bundles, 5)), TritonOptions(repo=str(repo), platform="python", max_batch=8,
                                                                   max_queue_delay_us=2000))
    return repo


def start_fleet(repo, tmp_path):
    servers = [TritonProcess(repo) for _ in range(SERVERS)]
    balancer = Balancer(tmp_path, [s.grpc for s in servers], [s.http for s in servers])
    return servers, balancer


def start_edges(balancer, artifacts, npz, tmp_path):
    start_at = time.time() + 8  # every edge loaded and warmed up before the first measured request
    edges = []
    for i in range(EDGES):
        report = tmp_path / "edge{}.json".format(i)
        argv = edge_argv("grpc://127.0.0.1:{}".format(balancer.grpc_port), artifacts, npz, "--report", report,
                         "--shuffle", "--seed", i, "--start-at", start_at, "--interval-ms", 10,
                         "--reconnect-timeout", 120, split=5, limit=REQUESTS)
        edges.append((report, subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                               cwd=REPO)))
    return edges


def finish(edges):
    """Every edge's report, once all have exited 0."""
    reports = []
    for report, edge in edges:
        _, err = edge.communicate(timeout=600)
        assert edge.returncode == 0, err
        reports.append(json.loads(report.read_text()))
    return reports


def check_every_sample_once(reports):
    assert len({tuple(r["labels"]) for r in reports}) == EDGES, "each edge ran its own shuffled samples"
    for r in reports:
        # one result per sample, in the edge's order, each the tiny model's own label
        assert r["n"] == REQUESTS and r["predictions"] == r["labels"], r["reconnects"]


def served(servers):
    return [statistics(s, NAME)[0] for s in servers]


def stop_all(servers, balancer, edges=()):
    for _, edge in edges:
        if edge.poll() is None:
            edge.kill()
    balancer.stop()
    for server in servers:
        server.stop()


def test_eight_edges_through_the_balancer_are_each_answered_once_and_every_server_takes_a_share(
        fleet_repo, tiny_bundles, tiny_labelled_npz, tmp_path):
    servers, balancer = start_fleet(fleet_repo, tmp_path)
    edges = []
    try:
        edges = start_edges(balancer, tiny_bundles, tiny_labelled_npz[0], tmp_path)
        reports = finish(edges)
        shares = served(servers)
    finally:
        stop_all(servers, balancer, edges)
    check_every_sample_once(reports)
    assert sum(shares) == EDGES * (REQUESTS + 3)  # 3 warm-up requests each; nothing sent twice
    assert all(share >= EDGES * REQUESTS / SERVERS / 4 for share in shares), shares


def test_one_server_killed_mid_run_and_every_sample_is_still_answered_once(fleet_repo, tiny_bundles,
                                                                           tiny_labelled_npz, tmp_path):
    servers, balancer = start_fleet(fleet_repo, tmp_path)
    edges = []
    try:
        edges = start_edges(balancer, tiny_bundles, tiny_labelled_npz[0], tmp_path)
        deadline = time.monotonic() + 300
        while sum(served(servers)) < EDGES * REQUESTS // 3:
            assert time.monotonic() < deadline and all(e.poll() is None for _, e in edges), "the edges stalled"
            time.sleep(0.2)
        victim = servers[0]
        before_death = statistics(victim, NAME)[0]
        victim.kill_server()
        reports = finish(edges)
        survivors = served(servers[1:])
    finally:
        stop_all(servers, balancer, edges)
    check_every_sample_once(reports)
    assert all(share > 0 for share in survivors), survivors
    # the survivors answered all the victim had not: each edge had at most one request it could have answered
    # between its last count and its death
    assert sum(survivors) >= EDGES * (REQUESTS + 3) - before_death - EDGES, (survivors, before_death)
    print("failover: {} of {} edges reconnected; survivors answered {}".format(
        sum(1 for r in reports if r["reconnects"]), EDGES, survivors))
