"""Adaptive mode's estimator: censored samples from overdue replies, stalls, probes sized at the pessimistic
estimate and cut off by time.  The planner is pure (synthetic profiles); the waits use real sockets."""
import threading
import time

import numpy as np
import pytest
from hand_cloud import connect, welcome

from runtime.edge.adaptive import PROBE_BYTES, PROBE_BYTES_PACED, AdaptivePlanner
from runtime.edge.client import CloudConnection, CloudLost
from runtime.edge.probe import echo_train
from runtime.wire import codec, sockets

# three points: the 12 KiB input, a mid point, the logits; the edge is slow, the cloud quick
POINTS = [{"name": "input", "bytes_per_sample": 12288}, {"name": "mid", "bytes_per_sample": 8192},
          {"name": "out", "bytes_per_sample": 400}]
EDGE = {"points": POINTS, "segment_ms": [40.0, 40.0], "output_bytes_per_sample": 400}
CLOUD = {"points": POINTS, "segment_ms": [10.0, 10.0]}


def planner(mbps=1000.0, hold=5):
    return AdaptivePlanner(EDGE, CLOUD, {"rtt_ms": 0.5, "bandwidth_mbps": mbps}, hold=hold)


def test_a_fast_link_keeps_the_input_on_the_cloud_and_a_slow_one_moves_the_work_to_the_edge():
    a = planner(hold=0)
    for _ in range(5):
        a.observe(12400, 470, 0.5 + 12870 * 8 / 1000e3, cloud_ms=20)  # 1000 Mbit/s
    assert a.decide(0) == (None, None)
    for _ in range(10):
        a.observe(12400, 470, 0.5 + 12870 * 8 / 1e3, cloud_ms=20)  # 1 Mbit/s: 103 ms on the wire
    split, reason = a.decide(0)
    assert split == 2 and "bandwidth now" in reason and abs(a.bandwidth_mbps - 1.0) < 0.2


def test_with_the_whole_model_here_a_slow_link_moves_to_local_and_a_fast_one_back():
    """EDGE's whole model is 80 ms here; at 1 Mbit/s split 2 costs 80 ms + the round trip, so local wins; at
    1000 Mbit/s split 0 (20 ms of cloud) does."""
    a = planner(hold=0)
    a.local = True
    for _ in range(10):
        a.observe(12400, 470, 0.5 + 12870 * 8 / 1e3, cloud_ms=20)  # 1 Mbit/s
    split, reason = a.decide(0)
    assert split == "local" and "split local predicted" in reason
    assert "local" not in a.alternates(0)  # nothing to load for it
    a.observe_local(80.0)  # a frame answered here: the edge is as fast as its profile says
    assert a.edge_scale == pytest.approx(1.0)
    a.observe(65536, 64, 0.5 + 65600 * 8 / 1000e3, probe=True)  # a probe: 1000 Mbit/s
    for _ in range(5):
        a.observe(65536, 64, 0.5 + 65600 * 8 / 1000e3, probe=True)
    assert a.decide("local")[0] == 0


def test_an_overdue_reply_raises_the_estimate_to_its_bound_at_once_and_the_real_sample_replaces_it():
    a = planner(hold=5)
    for _ in range(6):
        a.observe(12400, 470, 0.6, cloud_ms=20)
    before = a.bandwidth_mbps
    watch = a.watch()
    due = watch.after_ms(12400)
    assert 60 < due < 70  # rtt 0.5 + 2 x 20 ms of cloud + 4 x 0.1 ms on the wire (pessimistic) + 20
    watch.overdue(12400, 2 * due)  # 100 ms more than the cloud and rtt explain: at least that on the wire
    bound = 12870 * 8 / ((2 * due - 40.5) * 1000)
    assert a.bandwidth_mbps == pytest.approx(bound, rel=1e-6) and a.stalls == 1
    a.observe(12400, 470, 0.6, cloud_ms=80)  # it was the cloud that was slow: the link is as fast as before
    assert a.bandwidth_mbps == pytest.approx(before, rel=0.2)
    # the stall still counts as one: the hold is skipped for one decision, at the restored estimate
    assert a.decide(0) == (None, None)


def test_a_stall_replans_at_once_instead_of_waiting_out_the_hold():
    a = planner(hold=5)
    a.observe(12400, 470, 0.6, cloud_ms=20)
    a.decide(0)
    watch = a.watch()
    watch.overdue(12400, 500.0)  # half a second for 12 KiB: a very slow link
    a.lost()  # and the reply never came: the bound stays
    split, reason = a.decide(0)
    assert split == 2 and "after a stall" in reason
    assert a.decide(2) == (None, None)  # the hold applies again after the switch


def test_probes_are_sized_at_the_pessimistic_estimate():
    steady, noisy = planner(), planner()
    for i in range(20):
        steady.observe(12400, 470, 0.5 + 12870 * 8 / 100e3, cloud_ms=20)  # 100 Mbit/s every time
        noisy.observe(12400, 470, 0.5 + 12870 * 8 / (20e3 if i % 2 else 180e3), cloud_ms=20)
    assert steady.pessimistic_mbps() == pytest.approx(steady.bandwidth_mbps, rel=0.05)
    assert noisy.pessimistic_mbps() < 0.6 * noisy.bandwidth_mbps
    for a in (steady, noisy):
        a._last_sample -= 10  # no sample for 10 s: a probe is due
    assert steady.probe_size() > noisy.probe_size() >= PROBE_BYTES[0]


class _Peer(object):
    """A real socket pair: the edge's CloudConnection on one end, frames read and answered here on the other."""

    def __init__(self):
        self.conn, self.sock, self.reader = connect(3.0)
        welcome(self.conn, self.reader, self.sock)

    def answer(self, delay_s, count=1, rate_bytes_per_s=None):
        def run():
            try:
                for _ in range(count):
                    frame = self.reader.read()
                    if frame.type == codec.BYE:
                        return
                    if rate_bytes_per_s:
                        time.sleep(frame.array.nbytes / rate_bytes_per_s)
                    time.sleep(delay_s)
                    sockets.send_frame(self.sock, codec.RESULT, frame.request_id, {}, frame.array)
            except (OSError, codec.PeerClosed, codec.ProtocolError):
                pass  # the test is over and closed the socket
        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t

    def close(self):
        self.conn.close()
        self.sock.close()


class _Recorder(object):
    def __init__(self, after):
        self.after, self.calls = after, []

    def after_ms(self, sent):
        return self.after

    def overdue(self, sent, waited_ms):
        self.calls.append((sent, waited_ms))


def test_the_edge_reports_an_overdue_reply_at_doubling_waits_while_it_waits():
    peer = _Peer()
    try:
        t = peer.answer(0.7)
        watch = _Recorder(100.0)
        frame, sent, _ = peer.conn.infer(np.zeros((1, 8), np.float32), watch=watch)
        t.join(5)
        assert frame.type == codec.RESULT
        waits = [w for _, w in watch.calls]
        assert [s for s, _ in watch.calls] == [sent] * len(waits)
        # overdue at 100 ms, then at about 200 and 400 ms; the reply came at 700 ms
        assert len(waits) == 3 and 100 <= waits[0] < 250 and all(2 * a - 1 <= b < 2 * a + 150
                                                                 for a, b in zip(waits, waits[1:])), waits
    finally:
        peer.close()


def test_a_reply_that_never_comes_is_a_lost_cloud_after_the_timeout_with_the_watch_told_all_along():
    peer = _Peer()
    try:
        reader_done = threading.Event()
        threading.Thread(target=lambda: (peer.reader.read(), reader_done.set()), daemon=True).start()
        watch = _Recorder(200.0)
        t0 = time.monotonic()
        with pytest.raises(CloudLost, match="no reply from the cloud .* within 3 s"):
            peer.conn.infer(np.zeros((1, 8), np.float32), watch=watch)
        waits = [w for _, w in watch.calls]  # at 0.2 s, then twice the wait so far, up to the timeout
        assert len(waits) == 5 and 200 <= waits[0] < 350 and waits[-1] >= 3000, waits
        assert all(min(2 * a, 3000) - 1 <= b <= min(2 * a, 3000) + 150 for a, b in zip(waits, waits[1:])), waits
        assert time.monotonic() - t0 < 4.5
        assert reader_done.wait(5)
    finally:
        peer.close()


def test_a_probe_train_on_a_slow_link_stops_at_its_time_cap():
    peer = _Peer()
    try:
        # the peer takes 10 ms per 16 KiB chunk (about 13 Mbit/s): a 1 MiB probe would take 0.64 s
        peer.answer(0.0, count=64, rate_bytes_per_s=16384 / 0.01)
        echoed, back, ms = echo_train(peer.conn, 1 << 20, cap_ms=25.0)
        # the first chunk alone, then two in flight until 25 ms have passed, then the one still out
        assert 16384 <= echoed <= 8 * 16384 and ms < 25 + 2 * 10 + 500, (echoed, ms)
        assert back == echoed  # this peer echoes everything
    finally:
        peer.close()


def test_a_probe_train_on_a_fast_link_echoes_all_of_it():
    peer = _Peer()
    try:
        t = peer.answer(0.0, count=8)
        echoed, back, ms = echo_train(peer.conn, 8 * 16384, cap_ms=5000.0)
        t.join(5)
        assert echoed == back == 8 * 16384
    finally:
        peer.close()


def test_at_a_cadence_a_split_that_cannot_keep_up_is_never_chosen_and_jitter_counts_against_big_transfers():
    from runtime.edge.planner import at_cadence, choose, predict
    # 4 Mbit/s: split 0 is 0.5 + 25.0 (12.4 KiB) + 10 + 10 = 45.5 ms, split 2 80 ms + 0.5 + ~1 ms
    rows = predict(POINTS, EDGE["segment_ms"], CLOUD["segment_ms"], 0.5, 4.0, output_bytes=400)
    assert choose(rows)["split"] == 0  # one request alone: the input goes to the cloud
    # released every 40 ms, split 0 (45 ms) cannot keep up and split 2 (81 ms) neither: the fastest of them
    tight = at_cadence(rows, 40.0)
    assert tight[0]["released_ms"] is None and tight[2]["released_ms"] is None
    assert choose(tight)["split"] == 0
    # every 100 ms both keep up; a steady link: no queue to speak of, split 0 still wins
    steady = at_cadence(rows, 100.0, dev_us_per_bit=0.0)
    assert choose(steady)["split"] == 0 and steady[0]["released_ms"] < 1.01 * steady[0]["latency_ms"]
    # a link whose time per bit varies by its own size: split 0's 12 KiB queue, split 2's 400 bytes hardly
    jittery = at_cadence(rows, 100.0, dev_us_per_bit=1.0)  # 4x its mean time per bit
    assert jittery[0]["released_ms"] > jittery[2]["released_ms"] and choose(jittery)["split"] == 2
    assert jittery[2]["released_ms"] < 1.05 * jittery[2]["latency_ms"]


def test_the_adaptive_planner_plans_for_the_latency_from_release_at_its_cadence():
    fast = AdaptivePlanner(EDGE, CLOUD, {"rtt_ms": 0.5, "bandwidth_mbps": 4.0}, hold=0)
    paced = AdaptivePlanner(EDGE, CLOUD, {"rtt_ms": 0.5, "bandwidth_mbps": 4.0}, hold=0, interval_ms=100.0)
    for a in (fast, paced):
        for wire_ms in (30.0, 100.0) * 4:  # 1.5 Mbit/s on average, and very uneven
            a.observe(12400, 470, 0.5 + wire_ms, cloud_ms=20)
    # per request, sending the input (89 ms) and running the whole model (86 ms) are within the margin
    assert fast.decide(0) == (None, None)
    # released every 100 ms, the input keeps the uneven link busy 89% of the time: a queue (157 ms from release)
    split, reason = paced.decide(0)
    assert split == 2 and "from release" in reason


def test_measured_compute_times_rescale_the_profiles_for_every_split():
    """The profile said 80 ms for the whole model on the edge; the run measures 40: every split's edge time
    halves, and on a link where that matters the edge moves the work to itself."""
    a = planner(mbps=1.0, hold=0)  # 1 Mbit/s: split 0's 12.4 KiB take about 100 ms on the wire
    before = {r["split"]: r["edge_ms"] for r in a.rows()}
    for _ in range(20):
        a.observe(870, 470, 0.5 + 10.7, cloud_ms=0.0, edge_ms=40.0, split=2)
    assert a.edge_scale == pytest.approx(0.5, abs=0.01) and a.cloud_scale == 1.0  # the cloud did nothing here
    after = {r["split"]: r["edge_ms"] for r in a.rows()}
    assert after[1] == pytest.approx(before[1] / 2, rel=0.02) and after[0] == 0.0
    for _ in range(20):  # at split 0 the edge does nothing: its scale stays; the cloud's is measured
        a.observe(12400, 470, 0.5 + 103.0, cloud_ms=30.0, edge_ms=0.01, split=0)
    assert a.edge_scale == pytest.approx(0.5, abs=0.01) and a.cloud_scale == pytest.approx(1.5, abs=0.02)
    a.observe(870, 470, 11.2, cloud_ms=0.0, edge_ms=4000.0, split=2)  # a stall, not the CPU's speed
    assert a.edge_scale < 0.5 + 0.2 * 4.0


def test_at_a_cadence_probes_fit_the_idle_time_before_the_next_frame_and_wait_while_one_is_waiting():
    a = planner(mbps=0.1)  # a link that fell to 0.1 Mbit/s: 64 KiB would take 5 s
    a._last_sample -= 10
    assert a.probe_size(idle_ms=0.0) == 0 and a.probes == 0  # a frame is waiting: not now
    size = a.probe_size(idle_ms=100.0)
    assert size == PROBE_BYTES_PACED and a.probes == 1  # the smallest probe
    b = planner(mbps=100.0)
    b._last_sample -= 10
    fast = b.probe_size(idle_ms=100.0)
    assert PROBE_BYTES_PACED < fast <= 100.0 / 2 * b.pessimistic_mbps() * 1e3 / 8  # half the idle time
    c = planner(mbps=100.0)
    c._last_sample -= 10
    assert c.probe_size() >= PROBE_BYTES[0]  # back to back: as before


def test_serve_cloud_echoes_only_the_bytes_a_probe_asks_back_and_refuses_a_bad_count(tmp_path):
    from cloud_server import ServerProcess
    server = ServerProcess(tmp_path)  # an ECHO needs no bundle
    try:
        conn = CloudConnection(server.address, timeout=10)
        sent, back, ms = echo_train(conn, 4 * 16384, cap_ms=5000.0, reply_bytes=64)
        assert sent == 4 * 16384 and back == 4 * 64
        sent, back, ms = echo_train(conn, 16384, cap_ms=5000.0)  # no reply_bytes: all of it, as before
        assert back == 16384
        conn.request(codec.ECHO, {"reply_bytes": -1}, np.zeros(10, np.uint8))
        with pytest.raises(Exception, match="reply_bytes"):
            conn.receive()
        conn.close()
    finally:
        server.stop()


def test_the_heads_to_preload_are_the_plans_for_a_link_four_times_slower_or_faster():
    assert planner(mbps=4.0).alternates(0) == [2]  # a quarter of 4 Mbit/s: the edge does it all
    assert planner(mbps=0.5).alternates(2) == [0]  # four times 0.5 Mbit/s: the input goes to the cloud
    assert planner(mbps=1000.0).alternates(0) == []  # even a quarter of 1000 Mbit/s keeps split 0


class Clock(object):
    """An injected clock: seconds that pass only when a test says so."""

    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_the_hold_and_the_window_are_counted_in_seconds_of_the_injected_clock():
    from runtime.edge.adaptive import HOLD_S, WINDOW_S
    clock = Clock()
    a = AdaptivePlanner(EDGE, CLOUD, {"rtt_ms": 0.5, "bandwidth_mbps": 1000.0}, hold=HOLD_S, clock=clock)
    for _ in range(20):  # 1 Mbit/s, a request every 50 ms: however many requests, the hold is a second
        a.observe(12400, 470, 0.5 + 12870 * 8 / 1e3, cloud_ms=20)
    assert a.decide(0) == (None, None)
    clock.t += HOLD_S
    assert a.decide(0)[0] == 2
    for _ in range(3):  # back at 20 Mbit/s at once: a switch back within the hold is not made
        a.observe(65536, 64, 0.5 + 65600 * 8 / 20e3, probe=True)
    assert a.decide(2) == (None, None)
    clock.t += WINDOW_S + 1  # the window now holds only its newest sample, the probe's 20 Mbit/s
    assert a.bandwidth_mbps == pytest.approx(20.0, rel=0.01) and len(a._window) == 1
    assert a.decide(2)[0] == 0


def test_the_forecast_weighs_the_last_half_second_most_and_keeps_the_spread():
    clock = Clock()
    a = AdaptivePlanner(EDGE, CLOUD, {"rtt_ms": 0.5, "bandwidth_mbps": 100.0}, hold=0, clock=clock)
    for _ in range(30):  # three seconds at 10 Mbit/s ...
        a.observe(12400, 470, 0.5 + 12870 * 8 / 10e3, cloud_ms=20)
        clock.t += 0.1
    for _ in range(10):  # ... then one at 1 Mbit/s
        a.observe(12400, 470, 0.5 + 12870 * 8 / 1e3, cloud_ms=20)
        clock.t += 0.1
    assert 1.0 < a.bandwidth_mbps < 1.3  # the last second is nearly all of the forecast (a plain mean: 3.1)
    assert a.pessimistic_mbps() < a.bandwidth_mbps  # the older, faster samples still make a spread


def test_a_link_profile_seeds_the_forecast_until_transfers_come():
    # nine seconds at 100 Mbit/s and one at 0.5: expected latency keeps split 0, p95 moves to split 2
    network = {"rtt_ms": 0.5, "bandwidth_mbps": 5.0, "samples_mbps": [100.0] * 9 + [0.5]}
    latency = AdaptivePlanner(EDGE, CLOUD, network, hold=0, clock=Clock())
    p95 = AdaptivePlanner(EDGE, CLOUD, network, objective="p95", hold=0, clock=Clock())
    assert latency.decide(0) == (None, None)
    split, reason = p95.decide(0)
    assert split == 2 and "p95" in reason
    latency.observe(12400, 470, 0.5 + 12870 * 8 / 100e3, cloud_ms=20)  # a transfer: the window replaces the seed
    assert latency.bandwidth_mbps == pytest.approx(100.0, rel=0.01)


def test_a_switch_to_a_head_not_loaded_must_pay_for_its_load_within_the_hold():
    points = [{"name": "input", "bytes_per_sample": 12288}, {"name": "mid", "bytes_per_sample": 2048},
              {"name": "out", "bytes_per_sample": 400}]
    edge = {"points": points, "segment_ms": [30.0, 60.0], "output_bytes_per_sample": 0}
    cloud = {"points": points, "segment_ms": [30.0, 10.0]}
    # at 8 Mbit/s split 1 is 43 ms, split 0 53.5: 19% better, 10 ms a request, 240 ms over a second's hold
    cold = AdaptivePlanner(edge, cloud, {"rtt_ms": 1.0, "bandwidth_mbps": 8.0}, hold=0, clock=Clock())
    warm = AdaptivePlanner(edge, cloud, {"rtt_ms": 1.0, "bandwidth_mbps": 8.0}, hold=0, clock=Clock())
    warm.loaded.add(1)  # preloaded
    assert cold.decide(0) == (None, None)  # loading it (LOAD_MS) costs more than the hold would gain
    assert warm.decide(0)[0] == 1
    cold.load_ms = 50.0  # this run timed its own loads: a head loads in 50 ms here, less than the hold's gain
    assert cold.decide(0)[0] == 1


def test_adaptive_mode_hedges_its_predictions_at_the_deadline():
    a = AdaptivePlanner(EDGE, CLOUD, {"rtt_ms": 0.5, "bandwidth_mbps": 0.1}, hold=0, clock=Clock())
    a.deadline_ms = 100.0  # split 0 gives up at 100 - 80 = 20 ms and finishes here: the budget
    assert {r["split"]: r["expected_ms"] for r in a.rows()}[0] == pytest.approx(100.0)
