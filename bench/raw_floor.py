#!/usr/bin/env python3
"""Raw-socket floor: what the same bytes cost over a bare TCP socket, with no serialisation.

Framing (the least that lets one server answer any size): every request is a
24-byte header ``struct.pack("!QQQ", up, down, busy_us)`` followed by ``up`` bytes;
the server reads exactly that, keeps its CPU busy for ``busy_us`` microseconds (a
stand-in for the tail's compute, so the floor is measured in a run's cadence), then
answers with exactly ``down`` bytes (zeros).  Both
ends set TCP_NODELAY, use preallocated buffers, ``recv_into`` and ``sendall``; the
client sends header and payload in one ``sendall``.  So ``measure(addr, up, down)``
moves ``24 + up`` bytes up and ``down`` bytes down per round trip.

The server handles each connection in its own thread.  ``start_server(process=True)``
runs it in a separate process (``python raw_floor.py serve``), like the product's
serve-cloud, so that the client's timing does not share a GIL with the server.

Usage::

    srv = start_server(process=True)           # or process=False: a thread here
    times_ms = measure(srv.address, 262144 + 70, 400, n=200, warmup=20)
    srv.stop()

    python bench/raw_floor.py serve --port 0   # prints "raw-floor listening on HOST:PORT"
    python bench/raw_floor.py measure --cloud HOST:PORT --up 262214 --down 400
"""
import argparse
import os
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time

HEADER = struct.Struct("!QQQ")
MAX_BYTES = 1 << 31  # refuse absurd sizes (a garbled header)


def _recv_exactly(sock, view):
    """Fill ``view`` (a memoryview) from ``sock``; False when the peer closed first."""
    got, size = 0, len(view)
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            return False
        got += n
    return True


def _handle(conn):
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    header = bytearray(HEADER.size)
    header_view = memoryview(header)
    inbox = memoryview(bytearray(0))
    outbox = memoryview(bytearray(0))
    try:
        while _recv_exactly(conn, header_view):
            up, down, busy_us = HEADER.unpack(header)
            if up > MAX_BYTES or down > MAX_BYTES:
                return
            if len(inbox) < up:
                inbox = memoryview(bytearray(up))
            if len(outbox) < down:
                outbox = memoryview(bytearray(down))
            if not _recv_exactly(conn, inbox[:up]):
                return
            if busy_us:
                end = time.perf_counter() + busy_us / 1e6
                while time.perf_counter() < end:
                    pass
            conn.sendall(outbox[:down])
    except OSError:
        pass
    finally:
        conn.close()


class RawServer:
    """A running raw-floor server: ``address`` (host, port), ``stop()``; also a context manager."""

    def __init__(self, address, stop):
        self.address = address
        self.host, self.port = address
        self._stop = stop

    def stop(self):
        if self._stop is not None:
            self._stop()
            self._stop = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _listen(host, port):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(16)
    sock.settimeout(0.2)  # so that the accept loop notices stop()
    return sock


def _accept_loop(sock, stopping, conns):
    while not stopping.is_set():
        try:
            conn, _ = sock.accept()
        except socket.timeout:
            continue
        except OSError:
            break
        conn.settimeout(None)
        conns.append(conn)
        threading.Thread(target=_handle, args=(conn,), daemon=True).start()
    sock.close()


def start_server(host="127.0.0.1", port=0, process=False):
    """Start a raw-floor server (a thread here, or with ``process=True`` a child process); return a RawServer."""
    if process:
        child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "serve", "--host", host,
                                  "--port", str(port)], stdout=subprocess.PIPE, text=True)
        line = child.stdout.readline().strip()
        if not line.startswith("raw-floor listening on "):
            child.kill()
            child.wait()
            raise RuntimeError("raw-floor server did not start (said {!r})".format(line))
        bound_host, _, bound_port = line.rsplit(" ", 1)[1].rpartition(":")

        def stop_child():
            child.terminate()
            try:
                child.wait(5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            child.stdout.close()
        return RawServer((bound_host, int(bound_port)), stop_child)

    sock = _listen(host, port)
    address = sock.getsockname()[:2]
    stopping, conns = threading.Event(), []
    thread = threading.Thread(target=_accept_loop, args=(sock, stopping, conns), daemon=True)
    thread.start()

    def stop_thread():
        stopping.set()
        thread.join(2)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
    return RawServer(address, stop_thread)


def _address(address):
    if isinstance(address, str):
        host, _, port = address.rpartition(":")
        return host or "127.0.0.1", int(port)
    return address[0], int(address[1])


def measure(address, up_bytes, down_bytes, n=200, warmup=20, between=None, busy_ms=0.0):
    """Round-trip milliseconds of ``n`` requests (``up_bytes`` up, ``down_bytes`` down), after ``warmup``,
    minus ``busy_ms``, the time the server spends busy before answering each (the tail's compute).

    ``between`` (a callable) runs before each request, untimed: e.g. the edge's real
    head, so the floor is measured in the same cadence as a run (a process that has
    just computed for 20 ms, or slept, pays more per request than one in a tight loop).
    """
    sock = socket.create_connection(_address(address))
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        request = bytearray(HEADER.size + up_bytes)
        HEADER.pack_into(request, 0, up_bytes, down_bytes, int(busy_ms * 1000))
        request_view = memoryview(request)
        reply_view = memoryview(bytearray(down_bytes))
        times = []
        for i in range(warmup + n):
            if between is not None:
                between()
            start = time.perf_counter()
            sock.sendall(request_view)
            if not _recv_exactly(sock, reply_view):
                raise ConnectionError("raw-floor server closed the connection")
            elapsed = (time.perf_counter() - start) * 1000.0 - busy_ms
            if i >= warmup:
                times.append(elapsed)
        return times
    finally:
        sock.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description="raw-socket floor: echo sizes over bare TCP")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve")
    p_serve.add_argument("--host", default="127.0.0.1")
    p_serve.add_argument("--port", type=int, default=0)
    p_measure = sub.add_parser("measure")
    p_measure.add_argument("--cloud", required=True, help="HOST:PORT")
    p_measure.add_argument("--up", type=int, required=True)
    p_measure.add_argument("--down", type=int, required=True)
    p_measure.add_argument("-n", type=int, default=200)
    p_measure.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args(argv)
    if args.command == "serve":
        sock = _listen(args.host, args.port)
        host, port = sock.getsockname()[:2]
        print("raw-floor listening on {}:{}".format(host, port), flush=True)
        try:
            _accept_loop(sock, threading.Event(), [])
        except KeyboardInterrupt:
            pass
        return 0
    times = measure(args.cloud, args.up, args.down, args.n, args.warmup)
    print("raw-floor {} up / {} down: median {:.3f} ms, min {:.3f} ms over {}".format(
        args.up, args.down, statistics.median(times), min(times), len(times)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
