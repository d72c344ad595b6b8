"""serve-cloud's counters: requests, bytes, errors by code, connections; the
STATUS reply and the summary printed on shutdown.
"""
import collections
import threading


class Stats(object):
    def __init__(self):
        self._lock = threading.Lock()
        self.connections = 0
        self.active = 0
        self.requests = 0
        self.samples = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.pushes = 0
        self.fetches = 0
        self.errors = collections.Counter()

    def add(self, **counts):
        with self._lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)

    def error(self, code):
        with self._lock:
            self.errors[code] += 1

    def snapshot(self):
        with self._lock:
            return {"connections": self.connections, "active_connections": self.active, "requests": self.requests,
                    "samples": self.samples, "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
                    "pushes": self.pushes, "fetches": self.fetches, "errors": dict(self.errors)}

    def line(self):
        errors = ", ".join("{} {}".format(k, v) for k, v in sorted(self.errors.items())) or "none"
        return ("summary: {} connections, {} requests, {} samples, {} pushes, {} fetches, {:.1f} MiB in, "
                "{:.1f} MiB out, errors: {}".format(self.connections, self.requests, self.samples, self.pushes,
                                                    self.fetches, self.bytes_in / 1048576.0,
                                                    self.bytes_out / 1048576.0, errors))
