"""Deadline hedging's decisions (runtime/edge/hedge.py), the edge's own answer (runtime/edge/local.py) and the
report of who answered, with every time given to them: no clock, no sockets."""
import numpy as np
import pytest

from runtime.edge.hedge import HedgePolicy
from runtime.edge.local import LocalModel
from runtime.edge.report import RunRecorder, format_paths


def test_without_a_round_trip_the_deadline_alone_bounds_the_wait():
    policy = HedgePolicy(deadline_ms=150)
    # released at t=10 s, sent at 10.02 s, finishing here takes 30 ms: give up at 10 + 0.150 - 0.030
    at, why = policy.give_up_at(10.0, 10.02, 30.0)
    assert why == "deadline" and at == pytest.approx(10.12)


def test_an_overdue_reply_is_given_up_on_before_the_deadline():
    policy = HedgePolicy(deadline_ms=500)
    for rtt in (40.0, 42.0, 38.0, 40.0, 41.0, 39.0, 40.0, 40.0):
        policy.observe(rtt)
    bound = policy.overdue_ms()
    assert bound == pytest.approx(policy.srtt_ms + max(4 * policy.rttvar_ms, 20.0)) and 59.0 < bound < 100.0
    at, why = policy.give_up_at(0.0, 0.005, 1.0)
    assert why == "overdue" and at == pytest.approx(0.005 + bound / 1000.0)


def test_a_jittery_link_has_a_wider_bound_than_a_quiet_one():
    quiet, jittery = HedgePolicy(deadline_ms=1000), HedgePolicy(deadline_ms=1000)
    for i in range(20):
        quiet.observe(50.0)
        jittery.observe(20.0 if i % 2 else 80.0)
    assert quiet.overdue_ms() == pytest.approx(quiet.srtt_ms + 20.0)
    assert jittery.overdue_ms() > quiet.overdue_ms() + 50.0


def test_max_age_gives_up_so_that_the_next_frame_waits_no_longer_than_it():
    policy = HedgePolicy(max_age_ms=50)
    # no deadline: without a next frame, wait as long as the connection allows
    assert policy.give_up_at(1.0, 1.001, 5.0) == (None, None)
    at, why = policy.give_up_at(1.0, 1.001, 5.0, next_release=1.1)
    assert why == "max_age" and at == pytest.approx(1.1 + 0.050 - 0.005)


def test_a_frame_is_stale_once_it_has_waited_past_max_age():
    policy = HedgePolicy(max_age_ms=50, drop_stale=True)
    assert not policy.stale(2.0, 2.05) and policy.stale(2.0, 2.0501) and policy.drop_stale
    assert not HedgePolicy(deadline_ms=10).stale(2.0, 99.0)


class _Runner(object):
    def __init__(self, clock, ms, out):
        self.clock, self.ms, self.out = clock, ms, out

    def run(self, x):
        self.clock.now += self.ms / 1000.0
        return self.out


class _Clock(object):
    now = 0.0

    def __call__(self):
        return self.now


def test_a_request_is_finished_by_the_faster_route_once_both_are_timed():
    clock = _Clock()
    local = LocalModel(_Runner(clock, 40.0, "whole"), clock=clock)
    local.add_tail("b1", _Runner(clock, 3.0, "tail"))
    assert local.remaining_ms("b1") == 0.0  # nothing timed yet
    local.warm("b1", "activation", "x")
    assert local.remaining_ms("b1") == pytest.approx(3.0) and local.remaining_ms("b2") == pytest.approx(40.0)
    assert local.finish("b1", "activation", "x") == ("tail", pytest.approx(3.0))
    assert local.finish("b2", "activation", "x") == ("whole", pytest.approx(40.0))  # no tail of b2: the whole
    assert not LocalModel().can_finish("b1")


def test_the_report_says_who_answered_and_why():
    rec = RunRecorder()
    out = np.eye(10, dtype=np.float32)[[3]]
    times = {"edge_ms": 1.0, "roundtrip_ms": 2.0, "cloud_ms": 0.5, "queue_ms": 0.0, "wait_ms": 0.0}
    rec.add(times, out, [3], 100, 50, "b")
    rec.add(dict(times, roundtrip_ms=149.0, cloud_ms=0.0), out, [3], 100, 0, "b", "hedged", "deadline")
    rec.add(dict(times, roundtrip_ms=0.0, cloud_ms=0.0), out, [3], 0, 0, "b", "local", "link_busy")
    rec.late_replies = 1
    summary = rec.summary()
    assert summary["paths"]["hedged"] == dict(requests=1, reasons={"deadline": 1}, mean_ms=150.0, p50_ms=150.0,
                                              p99_ms=150.0)
    assert rec.served_by == ["cloud", "local", "local"] and summary["local_samples"] == 0
    text = "\n".join(format_paths(summary))
    assert "finished on the edge after waiting for the cloud: 1 requests (deadline 1)" in text
    assert "on the edge, not sent: 1 requests (link_busy 1)" in text and "Late replies discarded: 1" in text


