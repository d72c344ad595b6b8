#!/usr/bin/env python3
"""Replay a real cellular link: a user-space TCP proxy whose bottleneck follows a packet trace.

A trace is a delivery schedule in Mahimahi's mm-link format (one integer per line, a time in
milliseconds from the start of the trace, each line one opportunity for a 1500-byte packet to leave
the bottleneck queue; the schedule repeats with a period of its last time) or a ``seconds,mbit``
CSV turned into the same schedule.  The parser, with its one-line errors, is the edge's
(``runtime/edge/link.py``, which ``plan --link-profile`` reads); this module replays the schedule.
A run longer than the trace wraps around.

``TraceLink`` listens on loopback and forwards each connection to one target.  Per direction
there is ONE FIFO bottleneck queue shared by every connection, as in mm-link: bytes read from a
source socket join the queue's tail (after the same connection's bytes, they extend its chunk);
each opportunity of the trace takes up to 1500 bytes from the chunk at the head (a packet never
mixes two connections; an opportunity that finds the queue empty is wasted); the bytes it takes
reach the other side ``delay_ms`` later, as with mm-delay.  Everything runs in one thread: a
``selectors`` loop over non-blocking sockets that sleeps until the next event (an opportunity
while a queue holds bytes, the end of a delay, or a socket), then delivers every opportunity
elapsed since it last woke, at that opportunity's own time; it never spins.  Instead of dropping
packets the queue applies backpressure: while it holds ``queue_bytes`` the proxy stops reading
the sources of that direction (the senders' own socket buffers fill and they block).  FIN travels
behind a connection's last byte (with the same delay); a reset on either side resets the other at
once.  Before trace zero (``start_unix``) the link runs at a constant rate, the trace's mean over
its first 5 seconds, so that a warm-up or a planner's probe sees the trace's opening rate.

Why not ``tc`` with a rate change every step (bench/emulate.py's ``tbf``)?  The traces have
structure well below 100 ms (bursts, and outages of a few hundred ms where nothing leaves);
mm-link's per-packet schedule keeps all of it, a rate sampled per step smooths it away.  At low
rates tbf's bucket distorts the rate (a burst large enough for the kernel lets a small request
through at line rate after every pause), and each change of rate costs a fork of ``tc``.  And a
user-space proxy needs no root, so the tests that use it run on any machine.

What it does not model: TCP terminates at the proxy (the edge's TCP talks to the proxy on
loopback, the proxy's to the target), so TCP's own reaction to the bottleneck -- losses,
congestion window, retransmission timeouts -- is not emulated; a sender sees a bounded queue
with backpressure, never a drop.  mm-link's default queue (unbounded droptail) never drops
either, but there the sender's TCP sees the queue's delay in its RTT.  In front of the queue sit
the kernel's socket buffers of the edge's connection, so a bulk sender may have more in flight
than ``queue_bytes``; a request-reply exchange (one activation, one answer) sees only the link.

    python bench/tracelink.py --trace ATT-LTE-driving-2016.up --delay-ms 20 \\
        --listen 127.0.0.1:9100 --to 127.0.0.1:9999
    python bench/tracelink.py --validate ATT-LTE-driving-2016.up --seconds 30

``--validate`` pushes a bulk transfer through the replayed uplink to a local sink and prints the
per-second throughput beside the trace's rate; it exits 1 if they correlate below 0.9 or the
total is more than 10% off the trace's capacity.  Bad input exits 2 with one line on stderr.
"""
import argparse
import collections
import errno
import math
import os
import selectors
import signal
import socket
import struct
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from runtime.edge.link import PACKET, PACKET_BITS, Trace, TraceError, load_trace  # noqa: E402  (the parser)

LOG_BIN_MS = 100  # resolution of the delivery logs
WARMUP_S = 5.0  # before trace zero: the trace's mean over this opening window
RECV = 65536


# --- the proxy -------------------------------------------------------------------------------

class _Schedule(object):
    """A direction's opportunities in link time (ms since trace zero): constant spacing ``gap_ms`` before
    zero (opportunity i < 0 at i * gap_ms), the trace from zero (opportunity i >= 0 at trace.time_of(i))."""

    def __init__(self, trace):
        self.trace = trace
        opening = trace.mean_mbit(0.0, WARMUP_S)
        self.warmup_mbit = opening if opening > 0 else trace.mean_mbit()  # an outage at the start: the mean
        self.gap_ms = PACKET_BITS / (self.warmup_mbit * 1e3)

    def count_le(self, t_ms):
        """Index of the first opportunity after ``t_ms``."""
        if t_ms < 0:
            return int(math.floor(t_ms / self.gap_ms)) + 1
        return self.trace.count_le(t_ms)

    def time_of(self, i):
        return i * self.gap_ms if i < 0 else self.trace.time_of(i)


class _Half(object):
    """One direction of one connection: bytes from ``src`` to ``dst``."""

    def __init__(self, conn, direction, src, dst):
        self.conn, self.dir, self.src, self.dst = conn, direction, src, dst
        self.queued = 0  # bytes of this half in the bottleneck queue
        self.inflight = 0  # bytes in the delay line
        self.out = bytearray()  # delivered, not yet written to dst
        self.src_eof = False  # the source sent FIN
        self.fin_queued = False  # the FIN marker has entered the delay line
        self.fin_due = False  # the FIN has arrived: shut dst down once ``out`` is written
        self.done = False  # dst has been shut down for writing


class _Conn(object):
    def __init__(self, link, edge, target):
        self.edge, self.target = edge, target
        self.connected = False
        self.dead = False
        self.up = _Half(self, link._dirs["up"], edge, target)
        self.down = _Half(self, link._dirs["down"], target, edge)
        self.masks = {edge: 0, target: 0}


class _Direction(object):
    def __init__(self, name, trace, delay_ms, origin_ms):
        self.name = name
        self.sched = _Schedule(trace) if trace is not None else None
        self.delay_ms = float(delay_ms)
        self.queue = collections.deque()  # [half, bytearray, offset], oldest first
        self.queued = 0
        self.next_i = 0  # the next opportunity to use (valid while the queue holds bytes)
        self.line = collections.deque()  # delay line: (due ms, half, bytes or None for FIN), by due time
        self.inflight = 0
        self.delivered = 0
        self.log = []  # bytes that left the bottleneck, per LOG_BIN_MS bin of link time
        self.log_origin = int(math.floor(origin_ms / LOG_BIN_MS))

    def backlog(self):
        return self.queued if self.sched is not None else self.inflight

    def record(self, now_ms, nbytes):
        b = int(math.floor(now_ms / LOG_BIN_MS)) - self.log_origin
        if b >= len(self.log):
            self.log.extend([0] * (b + 1 - len(self.log)))
        self.log[max(b, 0)] += nbytes
        self.delivered += nbytes


class TraceLink(object):
    """A loopback TCP proxy to ``target`` whose uplink (edge -> target) replays ``up`` and downlink replays
    ``down`` (None: not shaped, only delayed); see the module's docstring for the mechanism.

    ``address`` is "127.0.0.1:PORT"; ``start_unix`` is trace zero (wall-clock seconds).  The loop runs in one
    daemon thread from construction until ``close()``.
    """

    def __init__(self, target, up, down=None, delay_ms=0.0, queue_bytes=256 * 1024, start_unix=None,
                 listen=("127.0.0.1", 0)):
        self.target = (target[0], int(target[1]))
        try:  # once, here: a name lookup in the loop would stall every connection
            info = socket.getaddrinfo(self.target[0], self.target[1], type=socket.SOCK_STREAM)[0]
        except socket.gaierror as exc:
            raise OSError("cannot resolve the target {}: {}".format(self.target[0], exc.strerror or exc))
        self._target_family, self._target_addr = info[0], info[4]
        self.up, self.down = up, down
        self.delay_ms = float(delay_ms)
        self.queue_bytes = int(queue_bytes)
        now_unix, now_mono = time.time(), time.monotonic()
        self.start_unix = now_unix if start_unix is None else float(start_unix)
        self._mono_zero = now_mono - (now_unix - self.start_unix)  # monotonic time of trace zero
        origin = self.now_ms()
        self._dirs = {"up": _Direction("up", up, delay_ms, origin), "down": _Direction("down", down, delay_ms, origin)}
        self._conns = []
        self._owner = {}  # socket -> its connection
        self._cpu_at_end = 0.0
        self._sel = selectors.DefaultSelector()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._wake_r, self._wake_w = socket.socketpair()
        try:
            self._listener.bind(listen)
            self._listener.listen(64)
        except OSError as exc:
            for s in (self._listener, self._wake_r, self._wake_w, self._sel):
                s.close()
            raise OSError(exc.errno, "cannot listen on {}:{}: {}".format(listen[0], listen[1], exc.strerror or exc))
        self._listener.setblocking(False)
        self._wake_r.setblocking(False)
        self._sel.register(self._listener, selectors.EVENT_READ)
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        host, self.port = self._listener.getsockname()[:2]
        self.address = "{}:{}".format(host, self.port)
        self._stop = False
        self.error = None
        self._thread = threading.Thread(target=self._run, name="tracelink", daemon=True)
        self._thread.start()
        self._clock = time.pthread_getcpuclockid(self._thread.ident) if hasattr(time, "pthread_getcpuclockid") else None

    # public views --------------------------------------------------------------------------
    def now_ms(self):
        """Link time: milliseconds since trace zero (negative before it)."""
        return (time.monotonic() - self._mono_zero) * 1000.0

    def now_s(self):
        return self.now_ms() / 1000.0

    @property
    def connections(self):
        return len(self._conns)

    def delivered_bytes(self, direction="up"):
        return self._dirs[direction].delivered

    def delivery_log(self, direction="up"):
        """(t_s, cum_bytes): bytes that had left the bottleneck by each ``t_s`` (s since trace zero, every 0.1 s)."""
        d = self._dirs[direction]
        counts = np.array(list(d.log), dtype=np.int64)
        t_s = (d.log_origin + 1 + np.arange(counts.size)) * (LOG_BIN_MS / 1000.0)
        return t_s, np.cumsum(counts)

    def throughput_mbit(self, direction="up", t0_s=0.0, t1_s=None, step_s=1.0):
        """Mbit/s per ``step_s`` from ``t0_s`` (both multiples of 0.1 s) to ``t1_s``, from the delivery log."""
        t_s, cum = self.delivery_log(direction)
        t1_s = (t_s[-1] if t_s.size else t0_s) if t1_s is None else t1_s
        edges = np.arange(t0_s, t1_s + 1e-9, step_s)
        if not t_s.size:
            return np.zeros(max(edges.size - 1, 0))
        at = np.interp(edges, np.concatenate([[t_s[0] - LOG_BIN_MS / 1000.0], t_s]), np.concatenate([[0], cum]))
        return np.diff(at) * 8 / step_s / 1e6

    def cpu_seconds(self):
        """CPU time the proxy's thread has used (the whole process's where threads have no clock)."""
        if not self._thread.is_alive():
            return self._cpu_at_end
        if self._clock is not None:
            try:
                return time.clock_gettime(self._clock)
            except OSError:  # it has just ended
                return self._cpu_at_end
        return time.process_time()

    def close(self):
        """Stop the thread and close every socket (connections still open are reset)."""
        if self._thread.is_alive():
            self._stop = True
            try:
                self._wake_w.send(b"x")
            except OSError:
                pass
            self._thread.join(10)
        self._wake_w.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # the loop ------------------------------------------------------------------------------
    def _run(self):
        try:
            while not self._stop:
                events = self._sel.select(self._timeout())
                now = self.now_ms()
                for d in self._dirs.values():
                    self._deliver(d, now)
                    self._land(d, now)
                for key, mask in events:
                    self._event(key.fileobj, mask, now)
                for d in self._dirs.values():
                    self._land(d, now)
                self._interests()
        except Exception as exc:  # a bug: keep it for the owner, and let the sockets go
            self.error = exc
            print("tracelink: loop failed: {!r}".format(exc), file=sys.stderr)
        finally:
            self._cpu_at_end = time.thread_time()
            for conn in list(self._conns):
                self._abort(conn)
            for s in (self._listener, self._wake_r):
                try:
                    self._sel.unregister(s)
                except (KeyError, ValueError):
                    pass
                s.close()
            self._sel.close()

    def _timeout(self):
        deadline = None
        for d in self._dirs.values():
            if d.queue:
                t = d.sched.time_of(d.next_i)
                deadline = t if deadline is None else min(deadline, t)
            if d.line:
                deadline = d.line[0][0] if deadline is None else min(deadline, d.line[0][0])
        if deadline is None:
            return None
        return max(0.0, (deadline - self.now_ms()) / 1000.0)

    def _deliver(self, d, now):
        """Use every opportunity in (last wake, now] while the queue holds bytes."""
        queue, sched = d.queue, d.sched
        while queue:
            t = sched.time_of(d.next_i)
            if t > now:
                break
            d.next_i += 1
            entry = queue[0]
            half, buf, off = entry
            n = min(PACKET, len(buf) - off)
            chunk = bytes(buf[off:off + n])
            off += n
            if off == len(buf):
                queue.popleft()
            elif off >= RECV and off * 2 >= len(buf):
                del buf[:off]
                entry[2] = 0
            else:
                entry[2] = off
            d.queued -= n
            half.queued -= n
            d.record(now, n)
            self._send_on(d, half, t + d.delay_ms, chunk)
            if half.src_eof and half.queued == 0:
                self._send_on(d, half, t + d.delay_ms, None)

    def _send_on(self, d, half, due, chunk):
        """Into the delay line (bytes, or None: the FIN behind them)."""
        if chunk is None:
            if half.fin_queued:
                return
            half.fin_queued = True
        else:
            half.inflight += len(chunk)
            d.inflight += len(chunk)
        d.line.append((due, half, chunk))

    def _land(self, d, now):
        """Move what the delay line holds up to ``now`` into the connections' output buffers, and write."""
        line, touched = d.line, []
        while line and line[0][0] <= now:
            _, half, chunk = line.popleft()
            if chunk is None:
                half.fin_due = True
            else:
                half.inflight -= len(chunk)
                d.inflight -= len(chunk)
                if half.conn.dead:
                    continue
                half.out += chunk
            if not touched or touched[-1] is not half:
                touched.append(half)
        for half in touched:
            self._flush(half)

    def _flush(self, half):
        conn = half.conn
        if conn.dead or half.done or (half.dst is conn.target and not conn.connected):
            return
        if half.out:
            try:
                sent = half.dst.send(half.out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._abort(conn)
                return
            del half.out[:sent]
        if half.fin_due and not half.out:
            half.done = True
            try:
                half.dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            if conn.up.done and conn.down.done:
                self._finish(conn)

    def _event(self, sock, mask, now):
        if sock is self._listener:
            self._accept()
            return
        if sock is self._wake_r:
            try:
                sock.recv(64)
            except OSError:
                pass
            return
        conn = self._owner.get(sock)
        if conn is None or conn.dead:
            return
        if mask & selectors.EVENT_WRITE:
            if sock is conn.target and not conn.connected:
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    self._abort(conn)
                    return
                conn.connected = True
            self._flush(conn.up if sock is conn.target else conn.down)
            if conn.dead:
                return
        if mask & selectors.EVENT_READ:
            self._read(conn.up if sock is conn.edge else conn.down, now)

    def _accept(self):
        while True:
            try:
                edge, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            edge.setblocking(False)
            target = socket.socket(self._target_family, socket.SOCK_STREAM)
            target.setblocking(False)
            for s in (edge, target):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(self, edge, target)
            self._conns.append(conn)
            self._owner[edge] = conn
            self._owner[target] = conn
            err = target.connect_ex(self._target_addr)
            if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
                self._abort(conn)
            elif err == 0:
                conn.connected = True

    def _read(self, half, now):
        d, conn = half.dir, half.conn
        try:
            data = half.src.recv(RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # reset by the peer: reset the other side too
            self._abort(conn)
            return
        if not data:
            half.src_eof = True
            if half.queued == 0:
                self._send_on(d, half, now + d.delay_ms, None)
            return
        if d.sched is None:  # not shaped: only delayed
            d.record(now, len(data))
            self._send_on(d, half, now + d.delay_ms, bytes(data))
            return
        if not d.queue:
            d.next_i = d.sched.count_le(now)  # the opportunities up to now found it empty
        if d.queue and d.queue[-1][0] is half:
            d.queue[-1][1] += data
        else:
            d.queue.append([half, bytearray(data), 0])
        d.queued += len(data)
        half.queued += len(data)

    def _readable(self, half):
        return (not half.src_eof and half.dir.backlog() < self.queue_bytes
                and len(half.out) < self.queue_bytes and (half.src is half.conn.edge or half.conn.connected))

    def _interests(self):
        for conn in self._conns:
            if conn.dead:
                continue
            for sock, rd, wr in ((conn.edge, conn.up, conn.down), (conn.target, conn.down, conn.up)):
                mask = 0
                if self._readable(rd):
                    mask |= selectors.EVENT_READ
                if (wr.out and not wr.done) or (sock is conn.target and not conn.connected):
                    mask |= selectors.EVENT_WRITE
                old = conn.masks[sock]
                if mask == old:
                    continue
                if old == 0:
                    self._sel.register(sock, mask)
                elif mask == 0:
                    self._sel.unregister(sock)
                else:
                    self._sel.modify(sock, mask)
                conn.masks[sock] = mask

    def _drop(self, conn):
        conn.dead = True
        for sock in (conn.edge, conn.target):
            if conn.masks.get(sock):
                self._sel.unregister(sock)
                conn.masks[sock] = 0
            self._owner.pop(sock, None)
        if conn in self._conns:
            self._conns.remove(conn)

    def _finish(self, conn):
        """Both directions have carried their FIN: close quietly."""
        self._drop(conn)
        conn.edge.close()
        conn.target.close()

    def _abort(self, conn):
        """A reset on one side (or a failed connect, or close()): reset both, forget the connection's bytes."""
        if conn.dead:
            return
        self._drop(conn)
        for sock in (conn.edge, conn.target):
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            sock.close()
        for half in (conn.up, conn.down):
            d = half.dir
            if half.queued:
                d.queue = collections.deque(e for e in d.queue if e[0] is not half)
                d.queued -= half.queued
                half.queued = 0


# --- validation ------------------------------------------------------------------------------

class Sink(object):
    """A local server that reads and discards everything, counting arrivals per 100 ms of ``clock()`` (ms)."""

    def __init__(self, clock):
        self.clock = clock
        self.bins = collections.Counter()  # 100 ms bin -> bytes received
        self.received = 0
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(8)
        self.port = self._server.getsockname()[1]
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self):
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:  # closed
                return
            t = threading.Thread(target=self._drain, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _drain(self, conn):
        with conn:
            while True:
                try:
                    data = conn.recv(RECV)
                except OSError:
                    return
                if not data:
                    return
                self.bins[int(math.floor(self.clock() / LOG_BIN_MS))] += len(data)
                self.received += len(data)

    def bytes_between(self, t0_s, t1_s):
        """Bytes that arrived in [t0_s, t1_s) (multiples of 0.1 s)."""
        b0, b1 = int(round(t0_s * 10)), int(round(t1_s * 10))
        bins = dict(self.bins)
        return sum(bins.get(b, 0) for b in range(b0, b1))

    def rates_mbit(self, seconds, step_s=1.0):
        steps = int(math.ceil(seconds / step_s - 1e-9))
        return np.array([self.bytes_between(k * step_s, (k + 1) * step_s) * 8 / step_s / 1e6 for k in range(steps)])

    def close(self):
        try:
            self._server.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._server.close()
        for t in self._threads:
            t.join(5)


def bulk_sender(address, stop, block=1 << 20):
    """Connect to ``address`` ("host:port") and send random bytes until ``stop`` is set (or the link goes)."""
    host, port = address.rsplit(":", 1)
    payload = os.urandom(block)
    try:
        with socket.create_connection((host, int(port))) as s:
            while not stop.is_set():
                s.sendall(payload)
    except OSError:
        pass


def validate(trace, seconds=None, lead_s=0.5, queue_bytes=256 * 1024):
    """Push a bulk transfer through ``trace`` as the uplink for ``seconds`` (default: its period, at most 60)
    and compare what a local sink received, second by second, with the trace's capacity."""
    seconds = min(trace.period_ms / 1000.0, 60.0) if seconds is None else float(seconds)
    seconds = max(1, int(round(seconds)))
    sink = Sink(clock=lambda: 0.0)
    stop = threading.Event()
    sender = None
    try:
        with TraceLink(("127.0.0.1", sink.port), up=trace, down=Trace.constant(50.0),
                       queue_bytes=queue_bytes, start_unix=time.time() + lead_s) as link:
            sink.clock = link.now_ms
            sender = threading.Thread(target=bulk_sender, args=(link.address, stop), daemon=True)
            sender.start()
            while link.now_s() < 0:
                time.sleep(0.05)
            cpu0, wall0 = link.cpu_seconds(), time.monotonic()
            while link.now_s() < seconds + 0.2:  # 0.2 s more: the last bins are complete
                time.sleep(0.1)
            cpu = (link.cpu_seconds() - cpu0) / (time.monotonic() - wall0)
            stop.set()
            error = link.error
    finally:
        stop.set()
        if sender is not None:
            sender.join(5)
        sink.close()
    if error is not None:
        raise RuntimeError("the link's loop failed: {!r}".format(error))
    expected = trace.rates_mbit(1.0, seconds)
    measured = sink.rates_mbit(seconds)
    capacity = trace.opportunities_between(0.0, seconds * 1000.0) * PACKET
    delivered = sink.bytes_between(0.0, seconds)
    fine = _pearson(trace.rates_mbit(LOG_BIN_MS / 1000.0, seconds), sink.rates_mbit(seconds, LOG_BIN_MS / 1000.0))
    return {"trace": trace.name, "seconds": seconds, "expected_mbit": expected, "measured_mbit": measured,
            "correlation": _pearson(expected, measured), "correlation_100ms": fine,
            "delivered_bytes": delivered, "capacity_bytes": capacity,
            "ratio": delivered / capacity if capacity else float("nan"), "cpu_s_per_s": cpu}


def _pearson(a, b):
    """Pearson's r, or None where the trace's side is constant (within 1% of its mean: a constant rate,
    whose only variation is packets rounded to whole milliseconds) or the measured side is."""
    if np.std(a) <= 0.01 * abs(np.mean(a)) or np.std(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def passed(result, min_corr=0.9, max_off=0.10):
    corr_ok = result["correlation"] is None or result["correlation"] >= min_corr  # None: a constant rate
    return corr_ok and abs(result["ratio"] - 1.0) <= max_off


def format_result(r):
    lines = ["| second | trace Mbit/s | measured Mbit/s |", "|---:|---:|---:|"]
    for k, (e, m) in enumerate(zip(r["expected_mbit"], r["measured_mbit"])):
        lines.append("| {} | {:.3f} | {:.3f} |".format(k + 1, e, m))
    corr, fine = ("n/a (constant rate)" if c is None else "{:.4f}".format(c)
                  for c in (r["correlation"], r["correlation_100ms"]))
    lines += ["", "| trace | seconds | correlation (1 s) | correlation (100 ms) | delivered / capacity | "
              "proxy CPU s per s |", "|---|---:|---:|---:|---:|---:|",
              "| {} | {} | {} | {} | {:,} / {:,} B ({:.3f}) | {:.3f} |".format(
                  r["trace"], r["seconds"], corr, fine, r["delivered_bytes"], r["capacity_bytes"], r["ratio"],
                  r["cpu_s_per_s"])]
    return "\n".join(lines)


# --- command line ----------------------------------------------------------------------------

def _hostport(text):
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError("{!r} is not HOST:PORT".format(text))
    return host.strip("[]"), int(port)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", help="the uplink's trace (Mahimahi or seconds,mbit CSV)")
    down = parser.add_mutually_exclusive_group()
    down.add_argument("--down-trace", help="the downlink's trace (default: a constant --down-mbit)")
    down.add_argument("--down-mbit", type=float, default=50.0, help="a constant downlink rate (default 50)")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay, each direction")
    parser.add_argument("--queue-kib", type=float, default=256.0, help="bottleneck queue per direction")
    parser.add_argument("--listen", type=_hostport, default=("127.0.0.1", 0), help="HOST:PORT to listen on")
    parser.add_argument("--to", type=_hostport, help="HOST:PORT of the target (the cloud server)")
    parser.add_argument("--validate", metavar="FILE", help="check a trace's replay with a bulk transfer, and exit")
    parser.add_argument("--seconds", type=float, help="--validate's window (default: the period, at most 60)")
    args = parser.parse_args(argv)
    if args.down_mbit is not None and not args.down_mbit > 0:
        parser.error("--down-mbit must be positive")
    if args.delay_ms < 0 or not args.queue_kib > 0:
        parser.error("--delay-ms must be >= 0 and --queue-kib positive")
    try:
        if args.validate:
            if args.seconds is not None and not args.seconds > 0:
                parser.error("--seconds must be positive")
            result = validate(load_trace(args.validate), args.seconds, queue_bytes=int(args.queue_kib * 1024))
            print(format_result(result))
            return 0 if passed(result) else 1
        if not args.trace or not args.to:
            parser.error("give --trace FILE and --to HOST:PORT (or --validate FILE)")
        up = load_trace(args.trace)
        down = load_trace(args.down_trace) if args.down_trace else Trace.constant(args.down_mbit)
    except TraceError as exc:
        print("tracelink: {}".format(exc), file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        link = TraceLink(args.to, up=up, down=down, delay_ms=args.delay_ms, queue_bytes=int(args.queue_kib * 1024),
                         listen=args.listen)
    except OSError as exc:
        print("tracelink: {}".format(exc.strerror or exc), file=sys.stderr)
        return 2
    with link:
        print("tracelink: listening on {} -> {}:{}, uplink {} (mean {:.2f} Mbit/s, period {:g} s)".format(
            link.address, args.to[0], args.to[1], up.name, up.mean_mbit(), up.period_ms / 1000.0), flush=True)
        while not stop.wait(1.0) and link.error is None:
            pass
    if link.error is not None:
        print("tracelink: the loop failed: {!r}".format(link.error), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
