"""bench/tracelink.py: parsing real-trace formats, the opportunity arithmetic, and the proxy on real sockets.

The traces here are small ones the tests write; the link checks run against local servers on loopback.
"""
import hashlib
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "bench"))
import tracelink  # noqa: E402
from tracelink import Trace, TraceError, TraceLink, load_trace  # noqa: E402

SCRIPT = os.path.join(REPO, "bench", "tracelink.py")
STEPS = [4.0, 0.5, 8.0, 0.0, 2.0, 6.5]  # Mbit/s per second; 21 Mbit in all = exactly 1750 packets


def mahimahi_from_rates(rates, step_ms=1000):
    """An mm-link trace of a piecewise-constant rate, written independently of the module: capacity is
    integrated millisecond by millisecond and each 1500 bytes accrued by the end of millisecond m is a line m+1."""
    lines, accrued, sent = [], 0.0, 0
    for m in range(len(rates) * step_ms):
        accrued += rates[m // step_ms] * 1e6 / 8 / 1000
        while accrued >= (sent + 1) * 1500 - 1e-6:
            sent += 1
            lines.append(m + 1)
    return "\n".join(str(t) for t in lines) + "\n"


def csv_from_rates(rates, header=True):
    return ("seconds,mbit\n" if header else "") + "".join("{},{}\n".format(k, r) for k, r in enumerate(rates))


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# --- parsing and arithmetic ------------------------------------------------------------------

def test_mahimahi_and_csv_give_the_same_schedule(tmp_path):
    mm = load_trace(write(tmp_path, "steps.up", mahimahi_from_rates(STEPS)))
    csv = load_trace(write(tmp_path, "steps.csv", csv_from_rates(STEPS)))
    bare = load_trace(write(tmp_path, "bare.csv", csv_from_rates(STEPS, header=False)))
    assert mm.name == "steps.up" and csv.name == "steps.csv"
    assert mm.period_ms == csv.period_ms == 6000
    assert len(mm.times) == len(csv.times) == 1750
    assert np.array_equal(csv.times, bare.times)
    for t in range(0, 12001):  # within one opportunity at every millisecond, through one repetition
        assert abs(mm.count_le(t) - csv.count_le(t)) <= 1, t
    for trace in (mm, csv):
        assert np.allclose(trace.rates_mbit(), STEPS, atol=0.0121)  # one 1500-byte packet per second
        assert trace.mean_mbit() == pytest.approx(sum(STEPS) / len(STEPS))


def test_rates_of_a_synthetic_trace():
    counts = [100, 0, 7, 333, 1]  # opportunities in each second
    times = []
    for s, k in enumerate(counts):
        times += [1000 * s + 1 + (999 * j) // max(k, 1) for j in range(k)]
    times.append(5000)  # the period: one more opportunity, in the last second
    counts[-1] += 1
    trace = Trace(times, 5000)
    assert np.allclose(trace.rates_mbit(), np.array(counts) * 0.012)
    assert np.allclose(trace.rates_mbit(seconds=15), np.tile(np.array(counts) * 0.012, 3))  # it repeats
    assert np.allclose(trace.rates_mbit(step_s=5.0), [sum(counts) * 0.012 / 5])
    assert trace.opportunities_between(0, 5000) == sum(counts)
    assert trace.opportunities_between(1000, 4000) == 340
    assert trace.mean_mbit(3.0, 4.0) == pytest.approx(333 * 0.012)
    assert Trace.constant(4.0).mean_mbit() == pytest.approx(4.0, abs=0.012)
    assert np.allclose(Trace.constant(12.0, period_ms=2000).rates_mbit(seconds=4), 12.0)


def test_finish_ms_by_hand():
    every_ms = Trace(range(1, 1001), 1000)  # one opportunity per millisecond
    assert every_ms.finish_ms(0, 3000) == 2
    assert every_ms.finish_ms(10, 3000) == 12
    assert every_ms.finish_ms(10, 3001) == 13
    assert every_ms.finish_ms(10.5, 1) == 11  # the next opportunity after the start
    assert every_ms.finish_ms(10, 0) == 10
    assert every_ms.finish_ms(999, 4500) == 1002  # 1000, then the repetition's 1001 and 1002
    assert every_ms.finish_ms(5 * 1000 + 999, 4500) == 6002
    wrap = Trace([0, 500, 1000], 1000)  # mm-link's own shape: a time 0 and a last time, both kept
    assert wrap.finish_ms(999, 3000) == 1000  # two packets leave at 1000
    assert wrap.finish_ms(999, 4500) == 1500
    outage = Trace([t for t in range(1, 1001) if not 200 < t <= 700], 1000)  # nothing for 500 ms
    assert every_ms.finish_ms(100, 150 * 1500) == 250
    assert outage.finish_ms(100, 150 * 1500) == 750
    assert outage.finish_ms(300, 1) == 701


def brute_finish(times, period, start, nbytes):
    """The per-packet loop finish_ms replaces."""
    left, cycle = nbytes, 0
    while True:
        for t in times:
            at = t + cycle * period
            if at > start:
                left -= 1500
                if left <= 0:
                    return at
        cycle += 1


def test_finish_ms_agrees_with_a_per_packet_loop():
    rng = random.Random(7)
    for _ in range(300):
        n = rng.randint(1, 40)
        times = sorted(rng.randint(0, 300) for _ in range(n))
        if times[-1] == 0:
            times[-1] = 1
        trace = Trace(times, times[-1])
        start = rng.uniform(0, 2000) if rng.random() < 0.7 else float(rng.choice(times) + times[-1] * rng.randint(0, 3))
        nbytes = rng.randint(1, 150 * 1500)
        assert trace.finish_ms(start, nbytes) == brute_finish(times, times[-1], start, nbytes), (times, start, nbytes)


def test_finish_ms_is_quick_for_large_transfers():
    trace = Trace(np.sort(np.random.RandomState(1).randint(0, 120000, 20000)), 120000)
    t0 = time.process_time()
    for k in range(100000):
        trace.finish_ms(k * 7.3, 10_000_000 + k)
    assert time.process_time() - t0 < 5.0


BAD = [
    ("x.up", "0\n5\n12a\n", 3, "'12a' is not a whole number of milliseconds"),
    ("x.up", "0\n\n5\n7.5\n", 4, "'7.5' is not a whole number"),  # blank lines still count
    ("x.up", "0\n1_000\n", 2, "'1_000' is not a whole number"),
    ("x.up", "0\n-3\n", 2, "-3 is negative"),
    ("x.up", "# a comment only\n\n", None, "no data lines"),
    ("x.up", "0\n5\r\n\x00\xff garbage\n", 3, "is not a whole number"),
    ("x.up", "0\n0\n0\n", 3, "every time is 0"),
    ("x.up", "", None, "no data lines"),
    ("x.up", "\n  \n", None, "no data lines"),
    ("x.csv", "seconds,mbit\n0,4\n1,2,3\n", 3, "3 fields"),
    ("x.csv", "0,4\n1\n", 2, "1 fields"),
    ("x.csv", "0,4\n1,abc\n", 2, "'abc' is not a number of Mbit/s"),
    ("x.csv", "0,4\nsoon,1\n", 2, "'soon' is not a number of seconds"),
    ("x.csv", "0,4\n1,nan\n", 2, "'nan' is not a number"),
    ("x.csv", "0,4\n1,-2\n", 2, "rate -2 Mbit/s is negative"),
    ("x.csv", "-1,4\n", 1, "-1 s is negative"),
    ("x.csv", "0,4\n2,1\n2,3\n", 3, "2 s is not after 2 s on line 2"),
    ("x.csv", "0,4\n2,1\n1,3\n", 3, "1 s is not after 2 s on line 2"),
    ("x.csv", "1,4\n2,4\n", 1, "times start at 0"),
    ("x.csv", "seconds,mbit\n0,0\n1,0\n", 3, "every rate is 0"),
    ("x.csv", "seconds,mbit\n", None, "a header and no rows"),
    ("x.csv", "time_s,rate\r\n0,1\r\n1,-0.5\r\n", 3, "rate -0.5 Mbit/s is negative"),
    ("x.csv", "0,0\n0.5,0\n", 2, "every rate is 0"),
    ("x.csv", "0,0.001\n", 1, "less than one 1500-byte packet"),
]


@pytest.mark.parametrize("name,text,line,what", BAD)
def test_bad_traces_name_the_file_and_the_line(tmp_path, name, text, line, what):
    path = write(tmp_path, name, text)
    with pytest.raises(TraceError) as info:
        load_trace(path)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "\n" not in message
    assert message.startswith("trace {} line {}: ".format(name, line) if line else "trace {}: ".format(name))
    assert what in message, message


def test_odd_but_valid_files_give_the_schedule_of_their_plain_form(tmp_path):
    """CRLF or CR line ends, a byte-order mark, comments, blank lines, no newline at the end, Mahimahi lines out
    of order: the same opportunities as the plain file."""
    plain = load_trace(write(tmp_path, "plain.up", "1\n1\n3\n7\n10\n"))
    odd = {"crlf.up": b"1\r\n1\r\n3\r\n7\r\n10\r\n", "cr.up": b"1\r1\r3\r7\r10",
           "bom.up": b"\xef\xbb\xbf1\n1\n3\n7\n10", "notes.up": b"# from a phone\n\n1\n1  # two at once\n\n3\n7\n10\n",
           "shuffled.up": b"7\n1\n10\n3\n1\n"}
    for name, data in odd.items():
        (tmp_path / name).write_bytes(data)
        trace = load_trace(str(tmp_path / name))
        assert trace.times.tolist() == plain.times.tolist() and trace.period_ms == 10, name
    csv = load_trace(write(tmp_path, "plain.csv", "0,1.2\n1,0\n2,2.4\n"))
    for name, data in {"header.csv": b"Time (s), Rate (Mbit/s)\r\n0,1.2\r\n1,0\r\n2,2.4",
                       "commented.csv": b"# iperf, 1 s steps\nseconds,mbit\n\n0, 1.2\n1,0  # outage\n2,2.4\n"}.items():
        (tmp_path / name).write_bytes(data)
        assert load_trace(str(tmp_path / name)).times.tolist() == csv.times.tolist(), name


def test_a_csv_of_fractional_seconds_and_zero_rates_by_hand(tmp_path):
    # 1.2 Mbit/s for 0.5 s (75,000 B: 50 packets), nothing for 0.75 s, then 2.4 Mbit/s for a last step as long
    # as the one before, 0.75 s (225,000 B: 150 packets): a period of 2 s
    trace = load_trace(write(tmp_path, "frac.csv", "0,1.2\n0.5,0\n1.25,2.4\n"))
    assert trace.period_ms == 2000 and len(trace.times) == 200
    assert trace.opportunities_between(0, 500) == 50
    assert trace.opportunities_between(500, 1250) == 0
    assert trace.opportunities_between(1250, 2000) == 150


def test_a_trace_shorter_than_the_run_wraps_around(tmp_path):
    trace = load_trace(write(tmp_path, "short.csv", "0,1.2\n1,0\n"))  # 100 packets, then a 1 s outage
    assert np.allclose(trace.rates_mbit(1.0, 5), [1.2, 0.0, 1.2, 0.0, 1.2])
    assert trace.finish_ms(1000, 1500) == 2010  # the outage, then the second lap's first packet
    assert trace.finish_ms(1000, 150 * 1500) == 4500  # 100 packets in the second lap, 50 in the third
    assert trace.mean_mbit(0.0, 6.0) == pytest.approx(0.6)


def test_unreadable_traces(tmp_path):
    for path in (str(tmp_path / "missing.up"), str(tmp_path)):
        with pytest.raises(TraceError) as info:
            load_trace(path)
        assert "cannot read" in str(info.value) and os.path.basename(path) in str(info.value)
        assert "\n" not in str(info.value)


def test_cli_bad_trace_exits_2_with_one_line_and_no_listener(tmp_path):
    bad = write(tmp_path, "bad.up", "0\n10\n-5\n")
    port = free_port()
    for args in (["--trace", bad, "--listen", "127.0.0.1:{}".format(port), "--to", "127.0.0.1:9"],
                 ["--trace", write(tmp_path, "good.up", "0\n10\n"), "--down-trace", bad,
                  "--listen", "127.0.0.1:{}".format(port), "--to", "127.0.0.1:9"],
                 ["--validate", bad]):
        proc = subprocess.run([sys.executable, SCRIPT] + args, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines() == ["tracelink: trace bad.up line 3: -5 is negative; times are "
                                                   "milliseconds from the start of the trace"]
        assert proc.stdout == ""
        assert port_is_free(port)


# --- the proxy -------------------------------------------------------------------------------

class Server(object):
    """A loopback server running ``handler(conn)`` in a thread per connection."""

    def __init__(self, handler):
        self.handler = handler
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.target = self.sock.getsockname()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(20)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            self.handler(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.sock.close()


def echo_then_digest(conn):
    """Echo everything; at the edge's FIN, send the SHA-256 of what came, then close."""
    digest = hashlib.sha256()
    while True:
        data = conn.recv(65536)
        if not data:
            break
        digest.update(data)
        conn.sendall(data)
    conn.sendall(digest.digest())


def connect(link):
    host, port = link.address.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=20)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_all(s):
    out = bytearray()
    while True:
        data = s.recv(65536)
        if not data:
            return bytes(out)
        out += data


def wait_for(predicate, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_bytes_arrive_intact_and_in_order_on_two_connections():
    server = Server(echo_then_digest)
    try:
        with TraceLink(server.target, up=Trace.constant(20.0), down=Trace.constant(20.0), delay_ms=5,
                       queue_bytes=64 * 1024) as link:
            results = {}

            def edge(k):
                payload = os.urandom(300_000 + k)
                s = connect(link)
                got = []
                reader = threading.Thread(target=lambda: got.append(recv_all(s)))
                reader.start()
                rng, pos = random.Random(k), 0
                while pos < len(payload):  # writes of assorted sizes
                    step = rng.choice([1, 100, 1500, 4000, 70000])
                    s.sendall(payload[pos:pos + step])
                    pos += step
                s.shutdown(socket.SHUT_WR)  # half-close: the reply still comes
                reader.join(30)
                s.close()
                results[k] = (payload, got[0] if got else b"")

            edges = [threading.Thread(target=edge, args=(k,)) for k in range(2)]
            for t in edges:
                t.start()
            for t in edges:
                t.join(60)
            for k in range(2):
                payload, got = results[k]
                assert len(got) == len(payload) + 32
                assert hashlib.sha256(got[:-32]).digest() == hashlib.sha256(payload).digest()
                assert got[-32:] == hashlib.sha256(payload).digest()
            assert link.delivered_bytes("up") == 600_001
            assert link.delivered_bytes("down") == 600_001 + 64
            assert wait_for(lambda: link.connections == 0)
            assert link.error is None
    finally:
        server.close()


def echo(conn):
    while True:
        data = conn.recv(65536)
        if not data:
            return
        conn.sendall(data)


@pytest.mark.parametrize("down", [None, Trace.constant(50.0)], ids=["down-unshaped", "down-50mbit"])
def test_delay_is_honoured_each_way(down):
    server = Server(echo)
    try:
        with TraceLink(server.target, up=Trace.constant(50.0), down=down, delay_ms=20) as link:
            s = connect(link)
            rtts = []
            for _ in range(6):
                t0 = time.monotonic()
                s.sendall(b"q" * 100)
                got = b""
                while len(got) < 100:
                    got += s.recv(100)
                rtts.append((time.monotonic() - t0) * 1000)
            s.close()
    finally:
        server.close()
    assert min(rtts) >= 40.0, rtts
    assert min(rtts) < 40.0 + 15.0, rtts  # the next opportunity (< 1 ms) each way, and the loop's wake-ups


def test_target_close_and_reset_reach_the_edge():
    def bye(conn):
        conn.sendall(b"bye")

    def reset(conn):
        conn.recv(10)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    for handler in (bye, reset):
        server = Server(handler)
        try:
            with TraceLink(server.target, up=Trace.constant(10.0), down=Trace.constant(10.0), delay_ms=2) as link:
                s = connect(link)
                if handler is bye:
                    assert recv_all(s) == b"bye"  # then EOF: the target's close came through
                    s.close()
                else:
                    s.sendall(b"hi")
                    with pytest.raises(ConnectionResetError):
                        recv_all(s)
                    s.close()
                assert wait_for(lambda: link.connections == 0)
                assert link.error is None
        finally:
            server.close()


def test_refused_target_resets_the_edge():
    with TraceLink(("127.0.0.1", free_port()), up=Trace.constant(10.0)) as link:
        try:  # the reset may come before the edge's connect has returned
            with connect(link) as s:
                s.recv(10)
        except ConnectionResetError:
            pass
        else:
            raise AssertionError("the edge was not reset")
        assert wait_for(lambda: link.connections == 0)


def test_before_trace_zero_the_link_runs_at_the_opening_rate(tmp_path):
    trace = load_trace(write(tmp_path, "open.csv", "0,2\n5,20\n6,20\n"))  # 2 Mbit/s for 5 s, then 20
    sink = tracelink.Sink(clock=lambda: 0.0)
    stop = threading.Event()
    try:
        with TraceLink(("127.0.0.1", sink.port), up=trace, start_unix=time.time() + 30) as link:
            assert link.now_s() < -29
            sender = threading.Thread(target=tracelink.bulk_sender, args=(link.address, stop), daemon=True)
            sender.start()
            time.sleep(0.3)
            t0, b0 = time.monotonic(), link.delivered_bytes()
            time.sleep(1.0)
            rate = (link.delivered_bytes() - b0) * 8 / (time.monotonic() - t0) / 1e6
            t_s, cum = link.delivery_log()
            logged = link.throughput_mbit("up", t0_s=t_s[-2] - 1.0, t1_s=t_s[-2])  # the last whole bins
            assert link.throughput_mbit("down", -30.0, -28.0).tolist() == [0.0, 0.0]
            stop.set()
    finally:
        stop.set()
        sink.close()
    assert rate == pytest.approx(2.0, rel=0.1)
    assert t_s[-1] < -28 and 0 < cum[-1] <= link.delivered_bytes() and np.all(np.diff(cum) >= 0)
    assert np.diff(t_s) == pytest.approx(0.1)
    assert logged == pytest.approx([2.0], rel=0.1)


def test_validation_on_a_synthetic_csv_trace(tmp_path):
    trace = load_trace(write(tmp_path, "steps.csv", csv_from_rates(STEPS)))
    result = tracelink.validate(trace, seconds=6)
    assert result["correlation"] >= 0.9, tracelink.format_result(result)
    assert abs(result["ratio"] - 1) <= 0.10, tracelink.format_result(result)
    assert np.allclose(result["measured_mbit"], STEPS, atol=0.5), tracelink.format_result(result)
    assert result["correlation_100ms"] >= 0.9, tracelink.format_result(result)
    assert tracelink.passed(result)


def test_cli_validates_a_synthetic_mahimahi_trace(tmp_path):
    path = write(tmp_path, "steps.up", mahimahi_from_rates(STEPS))
    proc = subprocess.run([sys.executable, SCRIPT, "--validate", path], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = proc.stdout.strip().splitlines()[-1].split("|")
    assert summary[1].strip() == "steps.up" and summary[2].strip() == "6"
    assert float(summary[3]) >= 0.9
    assert len([line for line in proc.stdout.splitlines() if line.startswith("| ") and line[2].isdigit()]) == 6


def test_cli_serves_until_sigterm(tmp_path):
    server = Server(echo)
    port = free_port()
    path = write(tmp_path, "fast.csv", "0,20\n")
    proc = subprocess.Popen([sys.executable, SCRIPT, "--trace", path, "--delay-ms", "1", "--listen",
                             "127.0.0.1:{}".format(port), "--to", "127.0.0.1:{}".format(server.target[1])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == ("tracelink: listening on 127.0.0.1:{} -> 127.0.0.1:{}, uplink fast.csv "
                                "(mean 19.99 Mbit/s, period 1 s)".format(port, server.target[1]))
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"ping")
        assert s.recv(4) == b"ping"
        s.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert proc.stderr.read() == ""
        assert port_is_free(port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.close()
