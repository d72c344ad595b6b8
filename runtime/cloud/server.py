"""serve-cloud: one process serving the tails of many bundles to many edges at once.

Threads, one per connection (see docs/ARCHITECTURE.md for why not asyncio): the
tail's compute runs in onnxruntime or torch, which release the GIL, so connections
really run in parallel; blocking sockets let each frame be received straight into
its numpy array.  The same connections carry deployment: edges fetch heads, an
admin pushes bundles (with the admin token).  SIGINT/SIGTERM stop accepting, let
in-flight requests finish and be answered, then print a summary and exit 0.
"""
import collections
import json
import logging
import os
import select
import signal
import socket
import sys
import threading
import time

from runtime import values
from runtime.bundle.manifest import KIND_SPLIT, validate
from runtime.bundle.schema import parse_split
from runtime.bundle.staging import remove_stale_temp_dirs, staged
from runtime.bundle.store import BundleStore
from runtime.cloud.registry import EXPORT_TIMEOUT_S, HandshakeError, OnDemandExporter, TailRegistry
from runtime.cloud.stats import Stats
from runtime.errors import CodedError, ManifestError, UserError
from runtime.wire import auth, codec, sockets, states
from runtime.wire.compression import available_codecs, decode
from runtime.wire.tls import server_context
from runtime.wire.transfer import file_entries, receive_files, send_files

log = logging.getLogger("edgesplit.server")


POLL_S = 0.2

DRAIN_S = 5.0  # after SIGTERM, requests already sent are answered for at most this long

MAX_QUEUED_PER_CONNECTION = 64  # with batching: an edge with this many requests queued is not read from


class Session(object):
    """What one connection is bound to."""

    def __init__(self, peer):
        self.peer = peer
        self.manifest = None
        self.runner = None
        self.nonce = None
        self.challenge = None       # the nonce an AUTH proof must answer
        self.state = states.Connection()  # authenticated, admin, bound: what it may send (wire/states.py)
        self.requests = 0
        self.samples = 0
        self.bytes_out = 0  # folded into the server's Stats when the connection closes (no lock per frame)
        self.send_lock = threading.Lock()  # batched results are sent from the batcher's thread
        self._pending = 0
        self._idle = threading.Condition()

    def begin(self):
        with self._idle:
            self._pending += 1

    def end(self):
        with self._idle:
            self._pending -= 1
            self._idle.notify_all()

    def wait_pending(self, below=1, timeout=None):
        """Wait until fewer than ``below`` requests of this connection are queued in a batcher."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending < below, timeout)


class CloudServer(object):
    def __init__(self, registry, options, tls_context=None):
        """``options``: ServeOptions (host, port, limits, timeouts, batching, tokens); ``tls_context``: TLS or None."""
        o = options
        host, port = o.host, o.port
        self.registry = registry
        self.tls_context = tls_context
        self.token = o.token or None
        self.started = time.time()
        self._sessions = set()  # live connections, for STATUS (their counters join Stats when they close)
        self.max_connections = o.max_connections
        self.hello_timeout = o.hello_timeout
        self.max_batch, self.max_delay_ms = o.max_batch, o.max_delay_ms
        self._batchers = {}
        self._batchers_lock = threading.Lock()
        self._bound = collections.Counter()  # bundle id -> connections bound to it (for the batchers)
        self.max_frame_bytes = max(int(o.max_frame_mb * 1024 * 1024), codec.CHUNK_BYTES)
        self.read_timeout = o.read_timeout
        self.admin_token = o.admin_token if o.allow_push else None
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
        # set here, not in serve_forever: a SIGTERM just after the ready line closes the listener before
        # serve_forever runs, and a timeout set then would fail on the closed socket (exit 1, not 0)
        self.listener.settimeout(POLL_S)
        self.address = self.listener.getsockname()[:2]

    def request_stop(self, *_):
        self._stop_at = time.monotonic()
        self._stop.set()
        try:  # no new connections while draining: an edge reconnecting finds the port closed and backs off
            self.listener.close()
        except OSError:
            pass

    def serve_forever(self):
        while not self._stop.is_set():
            try:
                conn, peer = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                if self._stop.is_set():
                    break
                raise
            self._threads = [x for x in self._threads if x.is_alive()]
            if len(self._threads) >= self.max_connections:  # a thread each: refuse rather than run out
                self._refuse(conn, peer)
                continue
            t = threading.Thread(target=self._serve_connection, args=(conn, peer), daemon=True)
            t.start()
            self._threads.append(t)
        self.listener.close()
        for t in self._threads:  # drain: each finishes the request it is in, then closes
            t.join(self.read_timeout + 5)
        for batcher in self._batchers.values():
            batcher.close()
            log.info("batcher %s: %d batches, %d samples", batcher.name, batcher.batches, batcher.samples)

    def _refuse(self, conn, peer):
        self.stats.error("busy")
        log.warning("event=refused peer=%s:%s reason=max_connections open=%d", peer[0], peer[1], len(self._threads))
        try:
            sockets.set_timeouts(conn, 1.0)
            sockets.send_error(conn, 0, "busy", "the cloud has {} connections open (--max-connections); try again "
                                         "later".format(len(self._threads)))
        finally:
            conn.close()

    def _batcher(self, session):
        """The dynamic batcher of the session's tail (None without --max-batch > 1)."""
        if self.max_batch <= 1:
            return None
        key = session.manifest.bundle_id
        with self._batchers_lock:
            if key not in self._batchers:
                from runtime.cloud.batching import DynamicBatcher
                self._batchers[key] = DynamicBatcher(session.runner, self.max_batch, self.max_delay_ms, key,
                                                     sources=lambda: self._bound.get(key, 0))
            return self._batchers[key]

    def _tls_handshake(self, conn, peer):
        """The TLS handshake, in the connection's thread with the hello deadline (a client that stalls it
        holds only its own thread); the wrapped socket, or None after logging why it failed."""
        import ssl
        try:
            conn.settimeout(self.hello_timeout)
            tls = self.tls_context.wrap_socket(conn, server_side=True)
            return tls
        except (ssl.SSLError, OSError) as exc:
            self.stats.error("tls")
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            log.warning("event=tls_failed peer=%s:%s reason=%s", peer[0], peer[1], str(reason).replace(" ", "_"))
            conn.close()
            return None

    def _serve_connection(self, conn, peer):
        if self.tls_context is not None:
            conn = self._tls_handshake(conn, peer)
            if conn is None:
                return
        session = Session("{}:{}".format(peer[0], peer[1]))
        session.state.authenticated = self.token is None
        self.stats.add(connections=1, active=1)
        with self._batchers_lock:
            self._sessions.add(session)
        log.info("event=connect peer=%s tls=%s", session.peer, "yes" if sockets.is_tls(conn) else "no")
        # without batching each request's tensor is done with before the next is read: receive into one array
        reader = sockets.FrameReader(conn, self.max_frame_bytes, allowed_types=codec.FROM_EDGE,
                                     frame_timeout=self.read_timeout, reuse_arrays=self.max_batch <= 1)
        reason = "closed by edge"
        try:
            sockets.tune_socket(conn)
            # the kernel wakes an idle reader every POLL_S to look at the stop flag; no per-frame system calls
            sockets.set_timeouts(conn, POLL_S, send_seconds=self.read_timeout)
            reason = self._serve_frames(conn, reader, session)
        except codec.PeerClosed:
            pass
        except Exception as exc:  # every failure ends this connection only; _failed says how
            reason = self._failed(conn, session, exc)
        finally:
            session.wait_pending(timeout=DRAIN_S)  # answer what is queued before closing
            self._bind(session, None)
            with self._batchers_lock:
                self._sessions.discard(session)
            self.stats.add(active=-1, bytes_in=reader.bytes_received, bytes_out=session.bytes_out,
                           requests=session.requests, samples=session.samples)
            conn.close()
            log.info("event=disconnect peer=%s requests=%d samples=%d reason=%s", session.peer, session.requests,
                     session.samples, json.dumps(reason))

    def _serve_frames(self, conn, reader, session):
        """Read and answer frames until BYE, a stop or a silent newcomer; return why the connection ends."""
        check = lambda t, dtype, shape, meta: _check_tensor(session, t, dtype, shape, meta)  # noqa: E731
        batching = self.max_batch > 1
        hello_deadline = time.monotonic() + self.hello_timeout
        while True:
            stopping = self._stop.is_set()
            if stopping and time.monotonic() - self._stop_at > DRAIN_S:
                return self._shutting_down(conn, session, "server shut down (drain time over)")
            if stopping and not reader.buffered() and not (sockets.is_tls(conn) and conn.pending()) and \
                    not select.select([conn], [], [], 0)[0]:
                # answered everything that had arrived: say why, close
                return self._shutting_down(conn, session, "server shutting down")
            if batching:
                session.wait_pending(MAX_QUEUED_PER_CONNECTION)  # backpressure: stop reading this edge
            try:
                frame = reader.read(check, idle_ok=True)
            except sockets.NoFrameYet:
                if stopping:  # nothing in flight: tell the edge why and close
                    return self._shutting_down(conn, session, "server shutting down")
                if not reader.bytes_received and time.monotonic() > hello_deadline:  # connected, said nothing
                    reason = "no frame within {:.0f} s of connecting".format(self.hello_timeout)
                    self.stats.error("timeout")
                    log.warning("event=error peer=%s code=timeout reason=no_frame_within_%.0fs", session.peer,
                                self.hello_timeout)
                    self._error(conn, session, "timeout", reason)
                    return reason
                continue
            if batching and frame.type != codec.INFER:  # answered after the batched requests before it
                session.wait_pending()
            if frame.type == codec.BYE:
                return "closed by edge"
            session.bytes_out += self._handle(conn, reader, frame, session)

    def _shutting_down(self, conn, session, reason):
        self._error(conn, session, "shutting_down", "the cloud server is shutting down")
        return reason

    def _failed(self, conn, session, exc):
        """What ends a connection with an error: counted, logged, told to the peer; return the reason."""
        if isinstance(exc, CodedError):  # a broken protocol, a refused handshake
            self.stats.error(exc.code)
            log.warning("event=error peer=%s code=%s message=%s", session.peer, exc.code, json.dumps(str(exc)))
            self._error(conn, session, exc.code, str(exc))
            return "error {}: {}".format(exc.code, exc)
        if isinstance(exc, socket.timeout):
            self.stats.error("timeout")
            log.warning("event=error peer=%s code=timeout reason=no_complete_frame_within_%.0fs", session.peer,
                        self.read_timeout)
            return "read timeout"
        if isinstance(exc, (OSError, UserError)):
            code = "io" if isinstance(exc, OSError) else "server"
            self.stats.error(code)
            log.warning("event=error peer=%s code=%s message=%s", session.peer, code, json.dumps(str(exc)))
            self._error(conn, session, "server", str(exc))
            return "error: {}".format(exc)
        # a bug: keep serving everyone else
        self.stats.error("internal")
        log.exception("event=error peer=%s code=internal", session.peer)
        self._error(conn, session, "internal", "internal server error: {}".format(type(exc).__name__))
        return "internal error"

    def _bind(self, session, manifest):
        with self._batchers_lock:
            if session.manifest is not None:
                self._bound[session.manifest.bundle_id] -= 1
            if manifest is not None:
                self._bound[manifest.bundle_id] += 1

    def _error(self, conn, session, code, message):
        """An ERROR frame from the connection's thread, after the batched results it would overtake."""
        session.wait_pending(timeout=DRAIN_S)
        with session.send_lock:
            sockets.send_error(conn, 0, code, message)

    def _handle(self, conn, reader, frame, session):
        """One frame: refused unless the connection's state allows it, else answered by its handler."""
        states.check(session.state, frame.type, frame.meta)
        return self.HANDLERS[frame.type](self, conn, reader, frame, session)

    def _status(self, conn, reader, frame, session):
        return sockets.send_frame(conn, codec.DONE, frame.request_id, {"status": self.status()})

    def _infer(self, conn, reader, frame, session):
        """A request: the tail now, or queued for the batcher, which answers it."""
        x = frame.array
        decode_ms = 0.0
        if "encoding" in frame.meta or "tensors" in frame.meta:  # --compress on the edge, or several tensors
            start = time.perf_counter()
            x = self._decoded(frame, session.manifest)
            decode_ms = (time.perf_counter() - start) * 1000.0
        session.requests += 1
        session.samples += values.batch_size(x)
        batcher = self._batcher(session)
        if batcher is None:
            start = time.perf_counter()
            out = session.runner.run(x)
            return self._result(conn, session, frame.request_id, out,
                                decode_ms + (time.perf_counter() - start) * 1000.0)
        request_id = frame.request_id

        def done(out, queue_ms, compute_ms, batch, error):
            try:
                if error is not None:
                    self.stats.error("internal")
                    with session.send_lock:
                        sockets.send_error(conn, request_id, "internal", "tail failed: {}".format(type(error).__name__))
                    return
                self.stats.add(bytes_out=self._result(conn, session, request_id, out, decode_ms + compute_ms,
                                                      queue_ms, batch))
            except OSError:
                pass  # the edge has gone; its connection thread notices
            finally:
                session.end()

        session.begin()
        batcher.submit(x, done, session)
        return 0

    def _decoded(self, frame, manifest):
        """The boundary value of an INFER frame, each tensor decompressed where the edge compressed it."""
        if "tensors" not in frame.meta:
            return decode(frame.meta["encoding"], frame.array, manifest["boundary"]["shape"],
                          max_bytes=self.max_frame_bytes)
        out = []
        for entry, array, spec in zip(frame.meta["tensors"], frame.array, manifest.boundaries):
            encoding = entry.get("encoding")
            out.append(array if encoding is None else decode(encoding, array, spec["shape"],
                                                             max_bytes=self.max_frame_bytes))
        if len({a.shape[0] for a in out}) > 1:
            raise codec.ProtocolError("bad_shape", "the frame's tensors hold {} samples; every tensor of a request "
                                                   "holds the same number".format(" and ".join(
                                                       str(a.shape[0]) for a in out)))
        return tuple(out)

    def _echo(self, conn, reader, frame, session):
        """A network probe: the payload goes straight back (or its first ``reply_bytes``)."""
        reply = frame.meta.get("reply_bytes")
        if reply is not None and (not isinstance(reply, int) or isinstance(reply, bool) or reply < 0):
            raise codec.ProtocolError("bad_meta", "ECHO reply_bytes must be a whole number of bytes, 0 or more")
        return sockets.send_frame(conn, codec.RESULT, frame.request_id, {},
                                  frame.array if reply is None else frame.array[:reply])

    def _result(self, conn, session, request_id, out, cloud_ms, queue_ms=0.0, batch=None):
        meta = {} if batch is None else {"batch": batch}
        active = self.registry.active_for(session.manifest.model_id)
        if active and active != session.manifest.bundle_id:
            meta["active"] = active  # the edge switches at its next batch boundary
        with session.send_lock:
            return sockets.send_frame(conn, codec.RESULT, request_id, meta, out, cloud_ms, queue_ms)

    def _hello(self, conn, reader, frame, session):
        meta = frame.meta
        if meta.get("role") == "admin":
            session.nonce = auth.new_nonce()
            states.advance(session.state, frame.type, meta)
            return sockets.send_frame(conn, codec.WELCOME, frame.request_id, {"nonce": session.nonce, "protocol": codec.VERSION})
        try:
            model = str(meta["model"])
            split = None if meta.get("split") is None else parse_split(meta["split"])
            bundle_id = None if meta.get("bundle_id") is None else str(meta["bundle_id"])
        except (KeyError, TypeError, ValueError, OverflowError):
            raise codec.ProtocolError("bad_meta", "HELLO needs model, and split or bundle_id (or neither)")

        def notify(message):
            sockets.send_frame(conn, codec.NOTICE, frame.request_id, {"message": message, "wait_s": EXPORT_TIMEOUT_S})

        manifest, runner = self.registry.resolve(model, split, bundle_id, notify)
        self._bind(session, manifest)
        session.manifest, session.runner = manifest, runner
        states.advance(session.state, frame.type, meta)
        log.info("event=hello peer=%s bundle=%s model=%s split=%s", session.peer, manifest.bundle_id,
                 manifest.model_id, manifest.split_index)
        return sockets.send_frame(conn, codec.WELCOME, frame.request_id, {
            "bundle_id": manifest.bundle_id, "manifest": manifest.data, "backend": runner.name,
            "provider": runner.provider, "max_frame_bytes": self.max_frame_bytes, "protocol": codec.VERSION,
            "codecs": available_codecs(),
            "active": self.registry.active_for(model)})

    def _auth(self, conn, reader, frame, session):
        """AUTH without a proof: a fresh challenge; with one: checked against the last challenge (used once)."""
        proof = frame.meta.get("proof")
        if proof is None:
            session.challenge = auth.new_nonce()
            return sockets.send_frame(conn, codec.CHALLENGE, frame.request_id, {"nonce": session.challenge,
                                                                      "required": self.token is not None})
        challenge, session.challenge = session.challenge, None
        if challenge is None:
            raise codec.ProtocolError("bad_meta", "AUTH with a proof needs an AUTH without one first (the challenge)")
        if self.token is not None and not auth.verify(self.token, challenge, auth.INFERENCE, proof):
            log.warning("event=auth peer=%s result=refused", session.peer)
            raise HandshakeError("bad_token", "wrong inference token; check --token / ${} on the edge".format(
                auth.TOKEN_ENV[auth.INFERENCE]))
        states.advance(session.state, frame.type, frame.meta)
        log.info("event=auth peer=%s result=%s", session.peer, "ok" if self.token else "no_token_needed")
        return sockets.send_frame(conn, codec.DONE, frame.request_id, {"authenticated": self.token is not None})

    def status(self):
        """Counters and state for a STATUS request (and the summary on shutdown)."""
        with self._batchers_lock:
            batchers = {k: {"batches": b.batches, "samples": b.samples} for k, b in self._batchers.items()}
            live = [(s.requests, s.samples) for s in self._sessions]
        data = self.stats.snapshot()
        data["requests"] += sum(r for r, _ in live)  # the open connections' requests so far
        data["samples"] += sum(n for _, n in live)
        data.update({"uptime_s": round(time.time() - self.started, 3), "protocol": codec.VERSION,
                     "tls": self.tls_context is not None, "token": self.token is not None,
                     "max_connections": self.max_connections, "batchers": batchers,
                     "active_bundles": dict(self.registry.active), "models": self.registry.models()})
        return data

    def _profile(self, conn, reader, frame, session):
        try:
            model, batch_size = str(frame.meta["model"]), int(frame.meta.get("batch_size", 1))
        except (KeyError, TypeError, ValueError, OverflowError):
            raise codec.ProtocolError("bad_meta", "PROFILE needs model and batch_size")
        if not 1 <= batch_size <= 1024:
            raise codec.ProtocolError("bad_meta", "PROFILE batch_size must be 1..1024")

        def notify(message):
            sockets.send_frame(conn, codec.NOTICE, frame.request_id, {"message": message, "wait_s": EXPORT_TIMEOUT_S})

        manifest, profile = self.registry.profile(model, batch_size, notify)
        return sockets.send_frame(conn, codec.DONE, frame.request_id, {"manifest": manifest.data, "profile": profile})

    def _fetch(self, conn, reader, frame, session):
        manifest = self.registry.manifest(str(frame.meta.get("bundle_id")))
        part, formats = frame.meta.get("part"), frame.meta.get("formats")
        if part not in ("head", "tail", "segments") or not isinstance(formats, list) or not formats or \
                not all(isinstance(f, str) for f in formats):
            raise codec.ProtocolError("bad_meta", "FETCH needs bundle_id, part (head, tail or segments) and formats")
        available = {fmt for prt, fmt, _ in manifest.iter_files() if prt == part}
        missing = [f for f in formats if available and f not in available]
        if missing:
            raise HandshakeError("unknown_format", "bundle {} has no {} in {}; re-export it with --formats {}".format(
                manifest.bundle_id, part, ", ".join(missing), ",".join(missing)))
        manifest.verify_files(parts=(part,), formats=formats)  # never serve a file that changed on disk
        sent = send_files(conn, manifest.directory, file_entries(manifest.data, (part,), formats))
        self.stats.add(fetches=1)
        log.info("event=fetch peer=%s part=%s bundle=%s bytes=%d", session.peer, part, manifest.bundle_id, sent)
        return sent

    def _push(self, conn, reader, frame, session):
        if not self.admin_token:
            raise HandshakeError("push_disabled", "this cloud does not accept pushes; start serve-cloud with "
                                 "--allow-push and an admin token")
        if not auth.verify(self.admin_token, session.nonce, auth.ADMIN, frame.meta.get("proof", "")):
            raise HandshakeError("bad_token", "wrong admin token; push refused")
        try:
            data = validate(frame.meta.get("manifest"), "the pushed manifest")
        except ManifestError as exc:
            raise codec.ProtocolError("bad_manifest", str(exc))
        activate = bool(frame.meta.get("activate"))
        held = self.registry.held(data["bundle_id"])
        sockets.send_frame(conn, codec.READY, frame.request_id, {"have": held is not None})
        if held is not None:
            manifest = held
            if activate and held.kind == KIND_SPLIT:
                self.registry.activate(self.registry.load(held)[0])
        else:
            remove_stale_temp_dirs(self.registry.store.root)
            with staged(self.registry.store.root, "push") as tmp:
                receive_files(reader, tmp, file_entries(data), what="push of {}".format(data["bundle_id"]))
                manifest = self.registry.install(tmp, data, activate)
        self.stats.add(pushes=1)
        log.info("%s pushed %s (%s)%s", session.peer, manifest.bundle_id, manifest.label,
                 ", activated" if activate else "")
        return sockets.send_frame(conn, codec.DONE, frame.request_id, {"bundle_id": manifest.bundle_id, "activated": activate,
                                                             "uploaded": held is None})


    # one handler per frame type an edge (or admin) may send; wire/states.py says when each is allowed
    HANDLERS = {codec.AUTH: _auth, codec.STATUS: _status, codec.HELLO: _hello, codec.INFER: _infer,
                codec.ECHO: _echo, codec.PROFILE: _profile, codec.FETCH: _fetch, codec.PUSH: _push}

def _check_tensor(session, type_, dtype, shape, meta=None):
    if type_ == codec.CHUNK:  # during a push, receive_files reads the chunks with its own check
        states.check(session.state, type_, meta)  # refused: outside a transfer
    if type_ == codec.ECHO:
        if dtype != "uint8" or len(shape) != 1:
            raise codec.ProtocolError("bad_shape", "ECHO carries 1-D uint8 bytes")
        return
    states.check(session.state, type_, meta)  # INFER: bound to a bundle (the payload is not received otherwise)
    manifest = session.manifest
    specs = manifest.boundaries
    entries = meta.get("tensors") if meta else None
    if entries is None:
        entries = [dict(meta or {}, dtype=dtype, shape=list(shape))]
    if len(entries) != len(specs):
        raise codec.ProtocolError("bad_shape", "the frame carries {} tensor(s) but bundle {} takes {} ({})".format(
            len(entries), manifest.bundle_id, len(specs), ", ".join(spec["name"] for spec in specs)))
    for spec, entry in zip(specs, entries):
        _check_one(manifest, spec, entry["dtype"], entry["shape"], entry.get("encoding") is not None)


def _check_one(manifest, spec, dtype, shape, encoded):
    """One tensor of an INFER frame against its spec in the bound bundle."""
    expected = tuple(spec["shape"][1:])
    what = "tensor" if spec["name"] == "boundary" else "tensor {}".format(spec["name"])
    if encoded:  # compressed: decode() checks it against the boundary spec
        if dtype not in ("float16", "uint8", "float32"):
            raise codec.ProtocolError("bad_encoding", "a compressed tensor is float16 or uint8, not {}".format(dtype))
        return
    if dtype != spec["dtype"]:
        raise codec.ProtocolError("bad_dtype", "{} dtype {} but bundle {} takes {}".format(
            what, dtype, manifest.bundle_id, spec["dtype"]))
    if len(shape) != len(expected) + 1 or tuple(shape[1:]) != expected or shape[0] < 1:
        raise codec.ProtocolError("bad_shape", "{} shape {} but bundle {} takes (N, {})".format(
            what, list(shape), manifest.bundle_id, ", ".join(str(d) for d in expected)))


def serve_cloud(options):
    """The serve-cloud command (``ServeOptions``): run until SIGINT/SIGTERM, then drain and print the summary."""
    o = options
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s serve-cloud %(levelname)s %(message)s")
    server = _start(o)
    signal.signal(signal.SIGTERM, server.request_stop)
    signal.signal(signal.SIGINT, server.request_stop)
    print("serve-cloud listening on {}:{}".format(server.address[0], server.address[1]), flush=True)
    server.serve_forever()
    log.info(server.stats.line())
    log.info("event=summary status=%s", json.dumps(server.status(), sort_keys=True))


def _start(o):
    """The server for ``o``, listening, with what it serves and how said in the log.  Everything an edge would
    meet later is checked first (the flags, the store's bundles, the exporter's model and weights), and nothing is created
    or bound until it has passed."""
    _check_flags(o)
    scanned = _check_store(o)
    exporter = OnDemandExporter(o.export_model, o.export_weights, o.export_random_init, o.export_input_shape) \
        if o.export_model else None
    if exporter:
        exporter.describe()
    registry = TailRegistry(BundleStore(o.artifacts), o.backend, o.device, o.threads, exporter, o.cuda_graphs)
    server = CloudServer(registry, o, server_context(o.tls_cert, o.tls_key, o.tls_client_ca))
    if not os.path.isdir(o.artifacts):  # made only now: a refusal above (a busy port too) leaves nothing behind
        os.makedirs(o.artifacts)
        log.info("created the empty store %s", o.artifacts)
    _log_setup(o, server, scanned)
    return server


def _check_flags(o):
    """Refuse flags that need another, or contradict one, in one line that says which to add or drop."""
    if o.allow_push and not o.admin_token:
        raise UserError("--allow-push needs an admin token: --admin-token TOKEN or ${}".format(
            auth.TOKEN_ENV[auth.ADMIN]))
    if o.cuda_graphs and (o.backend != "torchscript" or o.device == "cpu"):
        raise UserError("--cuda-graphs needs --backend torchscript --device cuda")
    if o.export_weights and o.export_random_init:
        raise UserError("--weights {} and --random-init contradict each other: drop --random-init to export with "
                        "those weights, or drop --weights to export untrained ones".format(o.export_weights))
    given = "--weights {}".format(o.export_weights) if o.export_weights else \
        "--random-init" if o.export_random_init else None
    if given and not o.export_model:
        raise UserError("{} is for the splits serve-cloud exports on demand, and it exports only with --model: add "
                        "--model MODEL (the model to export), or drop {}".format(given, given.split()[0]))


def _check_store(o):
    """The store's bundles and the directories it cannot read (``BundleStore.scan``), every bundle's files checked
    against its manifest.  Refused: a ``--store`` that is not there unless pushes or on-demand exports are to
    fill it (it is made once the server listens), and a damaged bundle (a file missing, or of another size or
    sha256), named with what to do, rather than served to none of the edges that ask for it."""
    if not os.path.isdir(o.artifacts) and not (o.allow_push or o.export_model):
        # a typo would give a server that refuses every edge
        raise UserError("--store {} is not a directory; export bundles into it first (`cli.py export "
                        "--store {}`), or start with --allow-push or --model to fill an empty store".format(
                            o.artifacts, o.artifacts))
    started = time.monotonic()
    good, bad = BundleStore(o.artifacts).scan()
    damaged = [(m, what) for m, what in ((m, m.damage()) for m in good) if what]
    if damaged:
        raise _damaged(damaged, o.artifacts)
    if good:
        log.info("verified the files of %d bundles against their manifests in %.1f s", len(good),
                 time.monotonic() - started)
    return good, bad


def _damaged(damaged, root):
    """The one line that stops serve-cloud on damaged bundles ``[(manifest, what is wrong)]``: the first, what is
    wrong with it and what to do, then the others' names."""
    first, what = damaged[0]
    part = "the segments" if first.split_index is None else "split {}".format(first.split_index)
    others = ", ".join(os.path.basename(m.directory) for m, _ in damaged[1:])
    return UserError("bundle {} is damaged: {}; re-export {} of {} into {} or remove the bundle, then start "
                     "serve-cloud again{}".format(first.directory, what, part, first.model_id, root,
                                                  " ({} more damaged: {})".format(len(damaged) - 1, others)
                                                  if others else ""))


def _log_setup(o, server, scanned):
    """What the server serves and how, in the log (the bundles ``scanned``, pushes, batching, exports, TLS,
    tokens)."""
    good, bad = scanned
    for directory, error in bad:
        log.warning("skipping %s: %s", directory, error)
    log.info("%d bundles in %s: %s", len(good), o.artifacts,
             ", ".join("{} ({})".format(m.label, m.bundle_id) for m in good) or "none")
    if server.admin_token:
        log.info("pushes accepted with the admin token")
    if o.max_batch > 1:
        log.info("dynamic batching: up to %d samples per tail run, waiting at most %.1f ms", o.max_batch,
                 o.max_delay_ms)
    exporter = server.registry.exporter
    if exporter:
        log.info("missing splits of %s (model id %s) are exported on demand, %s", o.export_model, exporter.model_id,
                 "with weights {}".format(exporter.weights) if exporter.weights else "with random weights")
    if server.tls_context is not None:
        log.info("TLS on%s", ", client certificates required (mutual TLS)" if o.tls_client_ca else "")
    if o.token:
        log.info("edges must prove the inference token")
    if o.host not in ("127.0.0.1", "::1", "localhost") and server.tls_context is None and not o.token:
        log.warning("listening on %s without TLS or a token: anyone who reaches this port can use it; "
                    "use --tls-cert/--tls-key and --token off a trusted lab network", o.host)
