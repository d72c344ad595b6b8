"""serve-cloud: one process serving the tails of many bundles to many edges at once.

Threads, one per connection (see docs/ARCHITECTURE.md for why not asyncio): the
tail's compute runs in onnxruntime or torch, which release the GIL, so connections
really run in parallel; blocking sockets let each frame be received straight into
its numpy array.  Each tail is loaded once, on first use, and shared by all
connections.  SIGINT/SIGTERM stop accepting, let in-flight requests finish and be
answered, then print a summary and exit 0.

Python 3.6 syntax.
"""
import collections
import logging
import select
import signal
import socket
import sys
import threading
import time

from . import protocol as p
from .backends import load_part
from .errors import UserError
from .store import BundleStore

log = logging.getLogger("edgesplit.server")
POLL_S = 0.2
DRAIN_S = 5.0  # after SIGTERM, requests already sent are answered for at most this long


class TailRegistry(object):
    """Bundles of a store by id; each tail loaded once (under a lock) and shared."""

    def __init__(self, store, backend="onnx", device="auto", threads=0):
        self.store = store
        self.backend = backend
        self.device = device
        self.threads = threads
        self._lock = threading.Lock()
        self._loaded = {}  # bundle_id -> (manifest, runner)

    def describe(self):
        good, bad = self.store.scan()
        return good, bad

    def resolve(self, model, split, bundle_id):
        """The (manifest, tail runner) an edge asks for, or a UserError with code telling why not."""
        with self._lock:
            if bundle_id in self._loaded:
                return self._loaded[bundle_id]
            good, _ = self.store.scan()  # rescan: bundles exported since start-up are found too
            by_id = {m.bundle_id: m for m in good}
            manifest = by_id.get(bundle_id)
            if manifest is None:
                same = [m for m in good if m.model_id == model and m.split_index == split]
                if same:
                    raise HandshakeError("bundle_mismatch", "the edge's bundle {} for {} split {} is not the cloud's "
                                         "({}): head and tail come from different exports; copy one bundle to "
                                         "both".format(bundle_id, model, split,
                                                       ", ".join(m.bundle_id for m in same)))
                raise HandshakeError("unknown_bundle", "the cloud holds no bundle for {} split {} (it holds: {}); "
                                     "export it on the cloud".format(model, split, ", ".join(
                                         "{}-s{}".format(m.model_id, m.split_index) for m in good) or "none"))
            manifest.verify_files(parts=("tail",))
            runner = load_part(manifest, "tail", self.backend, self.device, self.threads)
            log.info("loaded tail of %s (%s split %s) with %s on %s", manifest.bundle_id, manifest.model_id,
                     manifest.split_index, runner.name, runner.provider)
            self._loaded[bundle_id] = (manifest, runner)
            return manifest, runner


class HandshakeError(UserError):
    def __init__(self, code, message):
        UserError.__init__(self, message)
        self.code = code


class Stats(object):
    def __init__(self):
        self._lock = threading.Lock()
        self.connections = 0
        self.active = 0
        self.requests = 0
        self.samples = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.errors = collections.Counter()

    def add(self, **counts):
        with self._lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)

    def error(self, code):
        with self._lock:
            self.errors[code] += 1

    def line(self):
        errors = ", ".join("{} {}".format(k, v) for k, v in sorted(self.errors.items())) or "none"
        return ("summary: {} connections, {} requests, {} samples, {:.1f} MiB in, {:.1f} MiB out, errors: {}".format(
            self.connections, self.requests, self.samples, self.bytes_in / 1048576.0, self.bytes_out / 1048576.0,
            errors))


class CloudServer(object):
    def __init__(self, registry, host="127.0.0.1", port=9999, max_frame_bytes=p.DEFAULT_MAX_FRAME_BYTES,
                 read_timeout=30.0):
        self.registry = registry
        self.max_frame_bytes = max_frame_bytes
        self.read_timeout = read_timeout
        self.stats = Stats()
        self._stop = threading.Event()
        self._stop_at = None
        self._threads = []
        self.listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.listener.bind((host, port))
        except OSError as exc:
            raise UserError("cannot listen on {}:{} ({}); is another server running there? choose --port".format(
                host, port, exc.strerror or exc))
        self.listener.listen(128)
        self.address = self.listener.getsockname()[:2]

    def request_stop(self, *_):
        self._stop_at = time.monotonic()
        self._stop.set()

    def serve_forever(self):
        self.listener.settimeout(POLL_S)
        while not self._stop.is_set():
            try:
                conn, peer = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                if self._stop.is_set():
                    break
                raise
            conn.settimeout(None)
            t = threading.Thread(target=self._serve_connection, args=(conn, peer), daemon=True)
            t.start()
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
        self.listener.close()
        for t in self._threads:  # drain: each finishes the request it is in, then closes
            t.join(self.read_timeout + 5)

    def _serve_connection(self, conn, peer):
        peer_s = "{}:{}".format(peer[0], peer[1])
        self.stats.add(connections=1, active=1)
        log.info("connect %s", peer_s)
        reader = p.FrameReader(conn, self.max_frame_bytes, allowed_types=(p.HELLO, p.INFER, p.BYE))
        session = {"manifest": None, "runner": None, "requests": 0}
        reason = "closed by edge"
        try:
            p.tune_socket(conn)
            while True:
                stopping = self._stop.is_set()
                if stopping and time.monotonic() - self._stop_at > DRAIN_S:
                    reason = "server shut down (drain time over)"
                    p.send_error(conn, 0, "shutting_down", "the cloud server is shutting down")
                    break
                ready, _, _ = select.select([conn], [], [], 0 if stopping else POLL_S)
                if not ready:
                    if stopping:  # nothing in flight: tell the edge why and close
                        reason = "server shutting down"
                        p.send_error(conn, 0, "shutting_down", "the cloud server is shutting down")
                        break
                    continue
                conn.settimeout(self.read_timeout)
                frame = reader.read(tensor_check=lambda t, dtype, shape: _check_tensor(session, dtype, shape))
                conn.settimeout(None)
                if frame.type == p.BYE:
                    break
                sent = self._handle(conn, frame, session)
                self.stats.add(bytes_out=sent)
        except p.PeerClosed:
            pass
        except (p.ProtocolError, HandshakeError) as exc:
            reason = "error {}: {}".format(exc.code, exc)
            self.stats.error(exc.code)
            log.warning("%s %s: %s", peer_s, exc.code, exc)
            p.send_error(conn, 0, exc.code, str(exc))
        except socket.timeout:
            reason = "read timeout"
            self.stats.error("timeout")
            log.warning("%s timeout: no complete frame within %.0f s", peer_s, self.read_timeout)
        except (OSError, UserError) as exc:
            reason = "error: {}".format(exc)
            self.stats.error("io" if isinstance(exc, OSError) else "server")
            log.warning("%s %s", peer_s, exc)
            p.send_error(conn, 0, "server", str(exc))
        except Exception as exc:  # a bug: keep serving everyone else
            reason = "internal error"
            self.stats.error("internal")
            log.exception("%s internal error", peer_s)
            p.send_error(conn, 0, "internal", "internal server error: {}".format(type(exc).__name__))
        finally:
            self.stats.add(active=-1, bytes_in=reader.bytes_received)
            conn.close()
            log.info("disconnect %s after %d requests (%s)", peer_s, session["requests"], reason)

    def _handle(self, conn, frame, session):
        if frame.type == p.HELLO:
            meta = frame.meta
            try:
                model, split, bundle_id = str(meta["model"]), int(meta["split"]), str(meta["bundle_id"])
            except (KeyError, TypeError, ValueError):
                raise p.ProtocolError("bad_meta", "HELLO needs model, split and bundle_id")
            manifest, runner = self.registry.resolve(model, split, bundle_id)
            session["manifest"], session["runner"] = manifest, runner
            return p.send_frame(conn, p.WELCOME, frame.request_id, {
                "bundle_id": manifest.bundle_id, "backend": runner.name, "provider": runner.provider,
                "max_frame_bytes": self.max_frame_bytes, "protocol": p.VERSION})
        # INFER (the reader allows nothing else); _check_tensor has required a HELLO
        start = time.perf_counter()
        out = session["runner"].run(frame.array)
        cloud_ms = (time.perf_counter() - start) * 1000.0
        session["requests"] += 1
        self.stats.add(requests=1, samples=int(frame.array.shape[0]))
        return p.send_frame(conn, p.RESULT, frame.request_id, {"cloud_ms": cloud_ms}, out)


def _check_tensor(session, dtype, shape):
    manifest = session["manifest"]
    if manifest is None:
        raise p.ProtocolError("no_hello", "INFER before HELLO: the edge must name its bundle first")
    spec = manifest["boundary"]
    expected = tuple(spec["shape"][1:])
    if dtype != spec["dtype"]:
        raise p.ProtocolError("bad_dtype", "tensor dtype {} but bundle {} takes {}".format(
            dtype, manifest.bundle_id, spec["dtype"]))
    if len(shape) != len(expected) + 1 or tuple(shape[1:]) != expected or shape[0] < 1:
        raise p.ProtocolError("bad_shape", "tensor shape {} but bundle {} takes (N, {})".format(
            list(shape), manifest.bundle_id, ", ".join(str(d) for d in expected)))


def serve_cloud(host, port, artifacts, backend="onnx", device="auto", max_frame_mb=64.0, threads=0):
    """The serve-cloud command: run until SIGINT/SIGTERM, then drain and print the summary."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s serve-cloud %(levelname)s %(message)s")
    registry = TailRegistry(BundleStore(artifacts), backend, device, threads)
    good, bad = registry.describe()
    for directory, error in bad:
        log.warning("skipping %s: %s", directory, error)
    server = CloudServer(registry, host, port, int(max_frame_mb * 1024 * 1024))
    signal.signal(signal.SIGTERM, server.request_stop)
    signal.signal(signal.SIGINT, server.request_stop)
    log.info("%d bundles in %s: %s", len(good), artifacts,
             ", ".join("{}-s{} ({})".format(m.model_id, m.split_index, m.bundle_id) for m in good) or "none")
    if host not in ("127.0.0.1", "::1", "localhost"):
        log.warning("listening on %s without TLS or authentication: use only on a trusted network", host)
    print("serve-cloud listening on {}:{}".format(server.address[0], server.address[1]), flush=True)
    server.serve_forever()
    log.info(server.stats.line())
