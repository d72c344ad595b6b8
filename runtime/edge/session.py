"""The head in use: ``EdgeSession`` holds the connection, the cache and the loaded
heads, and switches between bundles at batch boundaries (hot swap, adaptive mode),
reconnecting with backoff when the cloud is lost.

Python 3.6 syntax: this module runs on the Jetson.
"""
import collections
import random
import time

from runtime.backends import format_of, load_part
from runtime.bundle.manifest import KIND_SPLIT, Manifest, ManifestError, validate
from runtime.bundle.schema import split_id, split_order
from runtime.edge import kserve
from runtime.edge.cache import BundleCache
from runtime.edge.client import CannotConnect, CloudConnection, CloudLost
from runtime.edge.console import say
from runtime.errors import UserError
from runtime.wire.codec import ProtocolError

LOADED_HEADS = 3  # heads kept loaded per edge (adaptive switches back and forth between a few)

RECONNECT_FIRST_S = 0.1    # a lost connection is retried after up to this long (full jitter) ...

RECONNECT_MAX_S = 5.0      # ... doubling each attempt up to this, until --reconnect-timeout


class EdgeSession(object):
    """The edge's side of a run: connection, cache, the bundle in use and its loaded head.

    ``switch_to`` is the hot-swap mechanism: at a batch boundary, bind the
    connection to another bundle of the same model (by id, or by split), fetch and
    verify its head if it is not cached, load it, and go on.
    """

    def __init__(self, options, compress="none", codec="none", busy_poll=False):
        """``options``: ClientOptions (cloud, model, cache, cache_keep, backend, device, threads, timeout, security)."""
        cloud, model, backend, timeout, security = (options.cloud, options.model, options.backend, options.timeout,
                                                    options.security)
        self.kserve = kserve.is_kserve(cloud)
        if self.kserve:
            self.encoder = kserve.TensorCast(compress, codec)
        else:
            from runtime.wire.compression import Encoder
            self.encoder = Encoder(compress, codec)
        self.model = model
        self.backend, self.device, self.threads = backend, options.device, options.threads
        self.formats = (format_of(backend),)
        self.cache = BundleCache(options.cache, options.cache_keep, log=say)
        self.cloud, self.timeout, self.busy_poll, self.security = cloud, timeout, busy_poll, security
        self.triton_model = getattr(options, "triton_model", None)
        self.batch_size = options.batch_size
        self.inflight = getattr(options, "inflight", 1)
        self.run_statistics = None  # kserve.RunStatistics while a run against Triton is measured
        self.conn = self._connect()
        self.reconnects = []  # one record per outage survived
        self.manifest = None
        self.head = None
        self.welcome = None
        self.fetches = []
        self.segments = None  # a SegmentLoader once the segments bundle is here (adaptive mode)
        self.chained = []     # switches served by a chain of cached segments instead of a fetch
        self.local = None     # with hedging (edge/hedge.py): the LocalModel that finishes late requests here
        self.loads_ms = []    # each head loaded from the cache, its ms
        self._runners = collections.OrderedDict()  # bundle id -> its loaded head, the last LOADED_HEADS used

    def _connect(self):
        """A new connection to the cloud: serve-cloud's protocol, or KServe v2 to a Triton server."""
        if self.kserve:
            return kserve.KServeConnection(self.cloud, self.timeout, self.model, self.cache.root, self.triton_model,
                                           self.encoder.dtype_name, self.batch_size, self.inflight)
        return CloudConnection(self.cloud, self.timeout, busy_poll=self.busy_poll, security=self.security)

    def reopen(self):
        """A new connection in place of this one (the cloud closes a connection once it refused a request on it)."""
        self.conn.close()
        self.conn = self._connect()

    def begin_measure(self):
        """The measured part starts (after the warm-up): note Triton's counters (nothing for serve-cloud)."""
        if self.kserve:
            self.run_statistics = kserve.RunStatistics()
            self.run_statistics.begin(self.conn)

    def end_measure(self, recorder):
        """The measured part is over: with Triton, its counters give the cloud and queue figures (run averages)."""
        stats, self.run_statistics = self.run_statistics, None
        if stats is not None:
            stats.end()
            compute_ms, queue_ms, requests, executions = stats.per_request()
            recorder.apportion_cloud(compute_ms, queue_ms, {"requests": requests, "executions": executions})

    def use_segments(self, manifest):
        """Let switches to uncached splits run the head as a chain of this segments bundle's pieces."""
        from runtime.backends.chain import SegmentLoader
        self.segments = SegmentLoader(manifest, self.backend, self.device, self.threads)

    def switch_to(self, bundle_id=None, split=None, chain_ok=False):
        """Use the cloud's bundle ``bundle_id`` (or its bundle for ``split``; neither: the active one).

        With ``chain_ok``, a head that is not cached is run as a chain of the cached
        segments (same weights) rather than fetched: adaptive switches happen when the
        link has just slowed down, the worst moment to download a head over it.
        """
        if self.run_statistics is not None:
            self.run_statistics.end()  # Triton's counters are per model: the next one's start at the switch
        welcome = self.conn.hello({"role": "edge", "model": self.model, "split": split, "bundle_id": bundle_id})
        data = validate(welcome.get("manifest"), "the cloud's manifest")
        lossless = self.encoder.codec
        if lossless != "none" and lossless not in welcome.get("codecs", ()):
            from runtime.wire.compression import PIP_NAMES
            raise UserError("the cloud cannot decode --codec {} (it has {}); install it there (pip install {}) or "
                            "choose another codec".format(lossless, ", ".join(welcome.get("codecs", ())) or "none",
                                                          PIP_NAMES[lossless]))
        if data["bundle_id"] != welcome.get("bundle_id") or (bundle_id and data["bundle_id"] != bundle_id):
            raise ProtocolError("bad_reply", "the cloud answered with bundle {} for {}".format(
                data["bundle_id"], bundle_id or "split {}".format(split)))
        manifest = self.cache.lookup(data, self.formats)
        if manifest is None and chain_ok and self._segments_match(data):
            self.head = self.segments.head(data["split"]["index"])
            self.manifest, self.welcome = Manifest(None, data), welcome  # no directory: the head is a chain
            self.chained.append({"bundle_id": data["bundle_id"], "split": data["split"]["index"]})
            say("split {}: head not cached, running it as a chain of {} cached segments (nothing fetched)".format(
                data["split"]["index"], data["split"]["index"]))
            return self.manifest
        if manifest is None:
            files = _head_files(data, self.formats)
            if files:
                say("fetching the head of {} ({} split {}, {:.1f} MiB) from the cloud".format(
                    data["bundle_id"], data["model"]["id"], split_id(data),
                    sum(f["bytes"] for f in files) / 1048576.0))
            manifest, received, seconds = self.cache.fetch(self.conn, data, self.formats)
            self.fetches.append({"bundle_id": data["bundle_id"], "split": split_id(data),
                                 "bytes": received, "seconds": seconds})
            if files:
                say("fetched and verified {} in {:.2f} s".format(data["bundle_id"], seconds))
            else:  # split 0: the whole model runs on the cloud, only the manifest is kept
                say("split {} has no head (the whole model runs on the cloud): nothing to fetch".format(
                    split_id(data)))
        self.head = self._runners.pop(manifest.bundle_id, None) or self._load_head(manifest)
        self._runners[manifest.bundle_id] = self.head  # kept loaded: switching back costs no load
        while len(self._runners) > LOADED_HEADS:
            self._runners.popitem(last=False)
        self.manifest, self.welcome = manifest, welcome
        if self.run_statistics is not None:
            self.run_statistics.begin(self.conn)
        return manifest

    def _load_head(self, manifest):
        t0 = time.perf_counter()
        head = load_part(manifest, "head", self.backend, self.device, self.threads)
        self.loads_ms.append((time.perf_counter() - t0) * 1000.0)
        return head

    def load_ms(self, default):
        """The median ms a head took to load in this run (what a switch to a head not loaded costs), or
        ``default`` before any was timed."""
        if not self.loads_ms:
            return default
        ordered = sorted(self.loads_ms)
        return ordered[len(ordered) // 2]

    @property
    def split_label(self):
        """The split requests are sent at (the report's timeline)."""
        return self.manifest.split_index

    def add_local_tail(self, local, fetch=True):
        """Give ``local`` (edge.local.LocalModel) the tail of the bundle in use, to finish its late requests here:
        from the cache, or a chain of the cached segments, or, where ``local`` has no whole model to finish them
        with and ``fetch`` allows (before the run), fetched from the cloud and kept beside the head (a tail can be
        most of the model: not fetched over the link when the edge can do without it)."""
        manifest = self.manifest
        if manifest.bundle_id in local.tails:
            return
        if manifest.part("tail") is None:
            from runtime.backends import PassThrough
            local.add_tail(manifest.bundle_id, PassThrough())  # the head ran the whole model
            return
        fmt = self.formats[0]
        if fmt not in manifest.part("tail")["files"]:
            return  # a tail in another format only (a detector's NMS is TorchScript): the whole model it is
        cached = manifest.directory is not None and self.cache.has_part(manifest.data, self.formats, "tail")
        if not cached and self._segments_match(manifest.data):
            local.add_tail(manifest.bundle_id, self.segments.tail(manifest.split_index))
            return
        if not cached and (not fetch or local.whole is not None or manifest.directory is None):
            return  # finished by the whole model
        if not cached:
            say("fetching the tail of {} (split {}) to finish late requests here".format(
                manifest.bundle_id, split_id(manifest.data)))
            manifest = self.cache.add_part(self.conn, manifest.data, self.formats, "tail")
        local.add_tail(manifest.bundle_id, load_part(manifest, "tail", self.backend, self.device, self.threads))

    def whole_model(self):
        """(a loaded runner of the whole model, its bundle id): the cached bundle that holds it (see
        ``find_full_model``), else the chain of every cached segment; None where neither is here."""
        full = find_full_model(self.cache.root, self.manifest.model_id, self.backend)
        if full is not None:
            return load_part(full, "head", self.backend, self.device, self.threads), full.bundle_id
        if self.segments is not None and self._segments_match(self.manifest.data):
            segments = self.segments.manifest
            return self.segments.head(len(segments["segments"])), segments.bundle_id
        return None

    def preload(self, splits):
        """Load the heads of ``splits`` now (fetching or chaining as a switch would), then come back to the
        current bundle: a later switch to one of them costs no load (adaptive mode, before measuring)."""
        current = self.manifest.bundle_id
        for split in splits:
            self.switch_to(split=split, chain_ok=True)
        self.switch_to(bundle_id=current)

    def _segments_match(self, data):
        if self.segments is None:
            return False
        seg = self.segments.manifest
        k = data["split"]["index"]
        same = ("sha256", "random_init", "random_seed")
        return (seg.model_id == data["model"]["id"] and "cut" not in data["split"]
                and 0 <= k < len(seg["points"])
                and all(seg["model"]["weights"].get(f) == data["model"]["weights"].get(f) for f in same)
                and seg["points"][k]["name"] == data["split"]["name"]
                and list(seg["points"][k]["shape"]) == list(data["boundary"]["shape"][1:]))

    def encode(self, boundary):
        """(frame meta, tensor(s) to send) for one boundary activation, compressed as asked: tensor by tensor, each
        with its own ``encoding``, where several cross the cut."""
        if isinstance(boundary, tuple):
            pairs = [self.encoder.encode(a) for a in boundary]
            return ({"tensors": [{"encoding": e} if e else {} for e, _ in pairs]},
                    tuple(payload for _, payload in pairs))
        encoding, payload = self.encoder.encode(boundary)
        return ({"encoding": encoding} if encoding else {}), payload

    def infer(self, x):
        """Head here, tail there: (output, edge_ms, roundtrip_ms, cloud_ms, bytes sent, bytes received, meta)."""
        t0 = time.perf_counter()
        meta, payload = self.encode(self.head.run(x))
        t1 = time.perf_counter()
        frame, sent, received = self.conn.infer(payload, meta)
        t2 = time.perf_counter()
        return (frame.array, (t1 - t0) * 1000.0, (t2 - t1) * 1000.0, frame.compute_ms,
                sent, received, frame.meta)

    def reconnect(self, give_up_at, reason):
        """A new connection bound to the same bundle, tried with capped exponential backoff and full
        jitter until ``give_up_at`` (time.monotonic()); raises CloudLost after that."""
        lost_at = time.monotonic()
        self.conn.close()
        delay, attempts = RECONNECT_FIRST_S, 0
        while True:
            attempts += 1
            try:
                conn = self._connect()
                try:
                    welcome = conn.hello({"role": "edge", "model": self.model, "split": None,
                                          "bundle_id": self.manifest.bundle_id})
                except BaseException:
                    conn.close()
                    raise
                if welcome.get("bundle_id") != self.manifest.bundle_id:
                    conn.close()
                    raise UserError("after reconnecting, the cloud serves bundle {} instead of {}".format(
                        welcome.get("bundle_id"), self.manifest.bundle_id))
                self.conn = conn
                if self.run_statistics is not None:
                    self.run_statistics.lost(conn)  # a server that was lost took its counters with it
                record = {"lost": reason, "attempts": attempts, "down_s": round(time.monotonic() - lost_at, 3)}
                self.reconnects.append(record)
                say("reconnected to the cloud after {:.2f} s ({} attempts)".format(record["down_s"], attempts))
                return record
            except (CloudLost, CannotConnect):
                pass  # not back yet; any other error (a refusal, another bundle) is final
            now = time.monotonic()
            if now >= give_up_at:
                raise CloudLost("the cloud at {} has been unreachable for {:.0f} s ({} attempts to reconnect)".format(
                    self.cloud, now - lost_at, attempts))
            time.sleep(min(random.uniform(0, delay), give_up_at - now))  # full jitter
            delay = min(delay * 2, RECONNECT_MAX_S)

    def close(self):
        self.conn.close()


def find_full_model(cache, model, backend="onnx"):
    """A bundle of ``model`` in the edge's cache whose head is the whole model (no tail), or None."""
    from runtime.bundle.store import BundleStore
    fmt = format_of(backend)
    good, _ = BundleStore(cache).scan(KIND_SPLIT)
    for manifest in sorted(good, key=lambda m: split_order(m.split_index), reverse=True):
        if manifest.model_id == model and manifest.part("tail") is None and manifest.part("head") is not None:
            try:
                manifest.verify_files(parts=("head",), formats=(fmt,))
            except ManifestError:
                continue
            return manifest
    return None


def _head_files(data, formats):
    head = data["parts"].get("head")
    return [f for fmt, f in head["files"].items() if fmt in formats] if head else []
