"""The network between edge and cloud, measured on the live connection.

``probe_network`` echoes a few payload sizes and fits ``t = rtt + 2 * bytes /
bandwidth``; ``echo_train`` sends a train of ECHOs for one bandwidth sample, capped
in time (adaptive mode's probes).

Python 3.6 syntax: this module runs on the Jetson.
"""
import collections
import time

import numpy as np

from runtime.wire import codec

PROBE_SIZES = (1024, 64 * 1024, 256 * 1024, 1024 * 1024)

PROBE_REPEATS = 5

PROBE_ENOUGH_MS = 250.0  # a size that takes this long says enough; larger ones would only take longer


def echo_once(conn, size):
    """Milliseconds for ``size`` bytes to go to the cloud and come back (one ECHO)."""
    payload = np.zeros(size, dtype=np.uint8)
    t0 = time.perf_counter()
    request_id, _ = conn.request(codec.ECHO, {}, payload)
    conn.answer(codec.ECHO, {}, request_id)
    return (time.perf_counter() - t0) * 1000.0


TRAIN_CHUNK = 16384  # bytes of one ECHO of a probe train


def echo_train(conn, size, cap_ms, chunk=TRAIN_CHUNK, reply_bytes=None):
    """Echo about ``size`` bytes as ECHOs of ``chunk`` bytes; return (bytes sent, bytes back, milliseconds).

    The first chunk goes alone; once it is back, two are kept in flight (enough to keep
    a link busy for a bandwidth sample).  No chunk is sent after ``cap_ms``, so a train
    that meets a slow link ends after the chunks already in flight, whatever ``size`` was.
    With ``reply_bytes`` each echo asks for only that many bytes back (a probe of the
    uplink alone); the bytes back are counted as they come.
    """
    sizes = [min(chunk, size - start) for start in range(0, max(size, 1), chunk)]
    meta = {} if reply_bytes is None else {"reply_bytes": reply_bytes}
    t0 = time.perf_counter()
    in_flight = collections.deque()  # request ids sent, not yet back
    sent = back = 0
    for i, n in enumerate(sizes):
        if i and (time.perf_counter() - t0) * 1000.0 > cap_ms:
            break
        in_flight.append(conn.request(codec.ECHO, meta, np.zeros(n, dtype=np.uint8))[0])
        sent += n
        back += _echoes_back(conn, in_flight, keep=0 if i == 0 else 1)
    back += _echoes_back(conn, in_flight, keep=0)
    return sent, back, (time.perf_counter() - t0) * 1000.0


def _echoes_back(conn, in_flight, keep):
    """Wait for the oldest echoes until ``keep`` are left in flight; the bytes they brought back."""
    done = 0
    while len(in_flight) > keep:
        frame = conn.answer(codec.ECHO, {}, in_flight.popleft())
        done += frame.array.nbytes if frame.array is not None else 0
    return done


def probe_network(conn, sizes=PROBE_SIZES, repeats=PROBE_REPEATS):
    """Echo a few payload sizes over ``conn``; fit round trip = rtt + 2 * bytes / bandwidth (both directions)."""
    samples = []
    for size in sizes:
        times = [echo_once(conn, size) for _ in range(repeats)]
        samples.append((size, float(np.median(times))))
        if samples[-1][1] > PROBE_ENOUGH_MS and len(samples) >= 2:
            break
    sizes_arr = np.array([s for s, _ in samples], dtype=np.float64)
    times_arr = np.array([t for _, t in samples], dtype=np.float64)
    slope, intercept = np.polyfit(2 * sizes_arr, times_arr, 1)  # ms per byte, both directions
    slope = max(slope, 1e-9)
    return {"rtt_ms": max(float(intercept), 0.0), "bandwidth_mbps": 8.0 / (slope * 1000.0),
            "samples": [{"bytes": s, "ms": t} for s, t in samples], "source": "probe"}
