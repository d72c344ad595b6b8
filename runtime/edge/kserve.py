"""The edge's connection to a tail served by NVIDIA Triton: KServe v2 over gRPC
(``--cloud grpc://HOST:PORT``) or HTTP (``http://HOST:PORT``), through tritonclient
(the ``triton`` extra).

``KServeConnection`` has the verbs of ``client.CloudConnection`` that a run uses:

* ``hello`` binds the model: the repository entry named by ``--triton-model``, else
  ``<model>-s<split>`` (export-triton's default name).  It reads the entry's config
  and pairs it with a head of the edge's cache, as HELLO does with serve-cloud: the
  config's ``bundle_id`` parameter must name a bundle whose head is cached (Triton
  serves no files: the head comes by ``push --to`` or a fetch from serve-cloud), and
  its input must take that head's boundary, per-sample dims and dtype (float16 with
  ``--compress fp16``, the tail exported with ``export-triton --input-dtype
  float16``), at the run's batch size.  Anything else is refused in one line.
* ``infer`` sends one activation as binary tensor data (never JSON lists) and
  returns the output; ``pipeline(depth)`` keeps up to ``depth`` requests in flight
  (``--inflight``) with tritonclient's asynchronous requests.
* ``statistics`` reads Triton's per-model counters.  Triton does not time a request
  in its reply, so the run's cloud and queue figures are those counters' differences
  over the measured part divided by the requests counted (``RunStatistics``): run
  averages, over every request the model served meanwhile (other edges' too).

An unreachable server raises ``CloudLost`` / ``CannotConnect`` (the run reconnects
and sends again what had no reply: inference is idempotent); a refusal raises
``UserError``.

Python 3.6 syntax: this module runs on the Jetson.
"""
import collections
import re
import threading
import time

import numpy as np

from runtime.bundle.manifest import KIND_SPLIT
from runtime.edge.client import CannotConnect, CloudLost
from runtime.edge.spin import SpinPolicy
from runtime.errors import UserError

SCHEMES = ("grpc://", "http://")
POINTER_SUFFIX = "-active"  # the repository entry that names a model's active bundle (cloud/triton_deploy.py)
_SPLIT_ENTRY = re.compile(r"^(.+)-s\d+$")  # a split's entry, as export-triton names it: M-sK
FOLLOW_POLL_S = 0.5         # how often a following edge reads it
DATATYPES = {"float32": "FP32", "float16": "FP16"}
CONFIG_TYPES = {"TYPE_FP32": "float32", "TYPE_FP16": "float16"}


def is_kserve(address):
    return bool(address) and address.startswith(SCHEMES)


def _tritonclient(scheme):
    """tritonclient's grpc or http module (ImportError -> one line naming the extra)."""
    try:
        if scheme == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        from tritonclient.utils import InferenceServerException
    except (ImportError, RuntimeError) as exc:  # RuntimeError: tritonclient installed without this protocol
        raise UserError("--cloud {}:// needs tritonclient ({}); install the triton extra: pip install -e "
                        "'.[triton]' (for http://: pip install 'tritonclient[http]')".format(scheme, exc))
    return module, InferenceServerException


class TensorCast(object):
    """The edge's encoder for Triton: the activation as it is, or cast to float16 (``--compress fp16``); a
    lossless codec or int8 would need a decoder in front of the tail, which Triton does not have."""

    codec = "none"

    def __init__(self, compress="none", codec="none"):
        if compress not in ("none", "fp16") or codec != "none":
            raise UserError("with a Triton --cloud, --compress takes none or fp16 (a tail exported with "
                            "--input-dtype float16) and --codec none")
        self.dtype_name = "float16" if compress == "fp16" else "float32"

    def encode(self, array):
        if self.dtype_name == "float16":
            return None, np.ascontiguousarray(array, dtype=np.float16)
        return None, array


class Reply(object):
    """What ``infer`` returns in place of serve-cloud's RESULT frame."""

    def __init__(self, array):
        self.array = array
        self.compute_ms = 0.0  # Triton does not time a request in its reply: see RunStatistics
        self.queue_ms = 0.0
        self.meta = {}


class KServeConnection(object):
    """One client of a Triton server, bound by ``hello`` to one model of its repository."""

    busy_poll = False  # tritonclient waits for its replies itself

    def __init__(self, address, timeout, model, cache, triton_model=None, input_dtype="float32", batch_size=1,
                 inflight=1):
        self.address = address
        self.scheme, _, self.hostport = address.partition("://")
        self.module, self.error = _tritonclient(self.scheme)
        self.timeout, self.model, self.cache = timeout, model, cache
        self.triton_model, self.input_dtype, self.batch_size = triton_model, input_dtype, batch_size
        self.spin = SpinPolicy()
        self.name = None
        self.version = ""   # the entry's version bound ("": Triton's newest)
        self.config = None
        self.pointer = None  # the fleet's active bundle {"bundle_id", "entry", "version"}, when it has one
        self._poller = None
        self._closed = threading.Event()
        self.input_name = self.output_name = None
        # a request's timeout: gRPC takes it per call, HTTP once for the client
        kw = {"network_timeout": timeout, "connection_timeout": timeout, "concurrency": inflight} \
            if self.scheme == "http" else {}
        self.per_call = {"client_timeout": timeout} if self.scheme == "grpc" else {}
        self.client = self.module.InferenceServerClient(self.hostport, **kw)

    # -- binding -------------------------------------------------------------------------------------------------

    def hello(self, meta):
        """Bind the model for ``meta``'s bundle id, split, or (neither) the fleet's active bundle; return a
        welcome as serve-cloud's HELLO would."""
        name, version, wanted = self._resolve(meta)
        self._ready(name)
        config = self._call(self._config, name)
        params = {k: v.get("string_value") for k, v in config.get("parameters", {}).items()}
        if wanted and not version:  # a bundle asked by id: the version of the entry that holds it
            version = next((k.split(".v", 1)[1] for k, v in params.items() if k.startswith("bundle_id.v")
                            and v == wanted), "")
        bundle_id = params.get("bundle_id.v{}".format(version)) or params.get("bundle_id")
        if not bundle_id:
            raise UserError("Triton's model {} has no bundle_id parameter: write it with `cli.py export-triton`".format(
                name))
        if wanted and bundle_id != wanted:
            raise UserError("Triton's model {} now serves bundle {}, not {}".format(name, bundle_id, wanted))
        manifest = self._cached(bundle_id=bundle_id, name=name)
        if meta.get("split") is not None and manifest.split_index != meta["split"]:
            raise UserError("Triton's model {} serves bundle {} of split {}, not split {}".format(
                name, bundle_id, manifest.split_index, meta["split"]))
        self._pair(name, config, manifest)
        self.name, self.version, self.config = name, version, config
        self._follow()
        kind = config.get("backend") or config.get("platform")
        return {"bundle_id": bundle_id, "manifest": manifest.data, "backend": "triton {}".format(kind),
                "provider": "{} ({})".format(name, self.address), "codecs": ["none"]}

    def _resolve(self, meta):
        """(model name, version or "", bundle id wanted or None) for a hello."""
        wanted = meta.get("bundle_id")
        if self.triton_model:
            return self.triton_model, "", wanted
        active = self.pointer if self.pointer is not None else (None if wanted or meta.get("split") is not None
                                                                 else self._read_pointer(must=True))
        if active is not None and (active["bundle_id"] == wanted or (not wanted and meta.get("split") is None)):
            return active["entry"], active["version"], active["bundle_id"]
        if wanted:
            manifest = self._cached(bundle_id=wanted, name=self.model + POINTER_SUFFIX)
            return "{}-s{}".format(self.model, manifest.split_index), "", wanted
        return "{}-s{}".format(self.model, meta["split"]), "", None

    def _read_pointer(self, must=False):
        """The fleet's active bundle from the ``<model>-active`` entry's config, or None where there is none."""
        name = self.model + POINTER_SUFFIX
        if not self._call(self.client.is_model_ready, name):
            if must:
                raise UserError("Triton at {} has no active bundle for {} (no model {} ready): give --split K, or "
                                "activate one with `cli.py push BUNDLE --triton-repo DIR --triton URL --activate`"
                                .format(self.address, self.model, name))
            return None
        params = {k: v.get("string_value") for k, v in self._call(self._config, name).get("parameters", {}).items()}
        return {"bundle_id": params.get("bundle_id"), "entry": params.get("entry"),
                "version": params.get("version", "")}

    def _follow(self):
        """Once bound (and not to a model named by --triton-model): if the repository has an active bundle, poll it
        every FOLLOW_POLL_S in a thread; each reply then carries it, as serve-cloud's do (meta "active")."""
        if self.triton_model or self._poller is not None:
            return
        self.pointer = self._read_pointer()
        if self.pointer is None:
            return
        self._poller = threading.Thread(target=self._poll, name="active-bundle", daemon=True)
        self._poller.start()

    def _poll(self):
        while not self._closed.wait(FOLLOW_POLL_S):
            try:
                self.pointer = self._read_pointer() or self.pointer
            except Exception:  # the server is away: the run's own requests find out; keep the last answer
                pass

    def _ready(self, name):
        """A server that is up but not ready (starting, its models loading) is not there yet (CloudLost); a
        ready server without this model ready is a refusal."""
        if not self._call(self.client.is_server_ready):
            raise CloudLost("Triton at {} is not ready".format(self.address))
        if not self._call(self.client.is_model_ready, name):
            raise UserError("Triton at {} has no model {} ready (its repository holds: {}); export it with `cli.py "
                            "export-triton` or name another with --triton-model".format(
                                self.address, name, ", ".join(self._model_names()) or "nothing"))

    def model_ids(self):
        """The model ids of the repository's entries: each entry's ``model_id`` parameter (``export-triton`` writes
        it), else what its name says (``M-sK``, a fleet's ``M-active``)."""
        found = set()
        for name in self._model_names():
            params = self._call(self._config, name).get("parameters", {})
            declared = (params.get("model_id") or {}).get("string_value")
            split_entry = _SPLIT_ENTRY.match(name)
            if declared:
                found.add(declared)
            elif name.endswith(POINTER_SUFFIX):
                found.add(name[:-len(POINTER_SUFFIX)])
            elif split_entry:
                found.add(split_entry.group(1))
        return found

    def _model_names(self):
        if self.scheme == "grpc":
            index = self._call(self.client.get_model_repository_index, as_json=True).get("models", [])
        else:
            index = self._call(self.client.get_model_repository_index)
        return sorted(m.get("name", "") for m in index)

    def _config(self, name):
        if self.scheme == "grpc":
            return self.client.get_model_config(name, as_json=True)["config"]
        return self.client.get_model_config(name)

    def _cached(self, bundle_id, name=None):
        """The cached bundle ``bundle_id`` of this model (None when only looking it up for a name)."""
        from runtime.bundle.store import BundleStore
        good, _ = BundleStore(self.cache).scan(KIND_SPLIT)
        for manifest in good:
            if manifest.bundle_id == bundle_id and manifest.part("head") is not None:
                return manifest
        if name is None:
            return None
        raise UserError("Triton's model {} serves bundle {}, whose head is not in the edge's cache {}: copy the bundle "
                        "there (`cli.py push BUNDLE --to ...`) or fetch it once from a serve-cloud".format(
                            name, bundle_id, self.cache))

    def _pair(self, name, config, manifest):
        """The pairing rule of HELLO: the model's input takes this head's boundary, dtype and batch."""
        if manifest.model_id != self.model:
            raise UserError("Triton's model {} serves bundle {} of model {}, not {} (--model)".format(
                name, manifest.bundle_id, manifest.model_id, self.model))
        inputs, outputs = config.get("input", []), config.get("output", [])
        if len(inputs) != 1 or len(outputs) != 1:
            raise UserError("Triton's model {} has {} inputs and {} outputs; a tail has one of each".format(
                name, len(inputs), len(outputs)))
        if len(manifest.boundaries) > 1:
            raise UserError("split {} passes {} tensors to the cloud; with a Triton --cloud give a single-tensor split "
                            "(`cli.py layers`), or run serve-cloud".format(manifest.split_index,
                                                                          len(manifest.boundaries)))
        max_batch = int(config.get("max_batch_size", 0))
        shape = list(manifest["boundary"]["shape"][1:])
        dims = [int(d) for d in inputs[0].get("dims", [])]
        if max_batch == 0:
            dims = dims[1:] if dims and dims[0] in (-1, self.batch_size) else [None]
        dtype = CONFIG_TYPES.get(inputs[0].get("data_type"), inputs[0].get("data_type"))
        if dims != shape or dtype != self.input_dtype:
            raise UserError("Triton's model {} takes {} {} per sample, but this head gives {} {}{}".format(
                name, dtype, dims, self.input_dtype, shape,
                " (--compress fp16 needs a tail exported with --input-dtype float16)"
                if dtype != self.input_dtype else ""))
        if max_batch and self.batch_size > max_batch:
            raise UserError("Triton's model {} takes batches of at most {} (max_batch_size); --batch-size is {}"
                            .format(name, max_batch, self.batch_size))
        self.input_name, self.output_name = inputs[0]["name"], outputs[0]["name"]

    # -- requests --------------------------------------------------------------------------------------------------

    def _call(self, fn, *args, **kwargs):
        """``fn(...)``; an unreachable server -> CloudLost/CannotConnect, any other Triton error -> UserError."""
        try:
            return fn(*args, **kwargs)
        except self.error as exc:
            raise self._translate(exc)
        except OSError as exc:
            raise CannotConnect("cannot reach Triton at {} ({}); is it running (`cli.py serve-triton`)?".format(
                self.address, exc.strerror or exc))
        except ValueError as exc:  # gRPC's "Cannot invoke RPC on closed channel!": this edge closed it (a lost server)
            if not self._closed.is_set():
                raise
            raise CloudLost("the connection to Triton at {} is closed ({})".format(self.address, exc))

    def _translate(self, exc):
        status = str(exc.status() or "")
        said = (exc.message() or str(exc)).splitlines()[0] if (exc.message() or str(exc)) else status
        if "UNAVAILABLE" in status or "DEADLINE" in status or "failed to connect" in said.lower():
            return CloudLost("Triton at {} is unreachable ({})".format(self.address, said))
        return UserError("Triton at {} refused: {}".format(self.address, said))

    def _inputs(self, array):
        tensor = self.module.InferInput(self.input_name, list(array.shape), DATATYPES[array.dtype.name])
        if self.scheme == "http":
            tensor.set_data_from_numpy(array, binary_data=True)
        else:
            tensor.set_data_from_numpy(array)
        outputs = [self.module.InferRequestedOutput(self.output_name, binary_data=True)
                   if self.scheme == "http" else self.module.InferRequestedOutput(self.output_name)]
        return [tensor], outputs

    def infer(self, array, meta=None, watch=None):
        """One activation to the model, its output back: (Reply, tensor bytes sent, tensor bytes received)."""
        array = np.ascontiguousarray(array)
        inputs, outputs = self._inputs(array)
        result = self._call(self.client.infer, self.name, inputs, model_version=self.version, outputs=outputs,
                            **self.per_call)
        out = result.as_numpy(self.output_name)
        return self._reply(out), array.nbytes, out.nbytes

    def _reply(self, out):
        reply = Reply(out)
        if self.pointer is not None:
            reply.meta["active"] = self.pointer["bundle_id"]
        return reply

    def pipeline(self, depth):
        return KServePipe(self, depth)

    def statistics(self):
        """Triton's cumulative counters for the bound model (``RunStatistics.counters``)."""
        if self.scheme == "grpc":
            stats = self._call(self.client.get_inference_statistics, self.name, self.version, as_json=True)
        else:
            stats = self._call(self.client.get_inference_statistics, self.name, self.version)
        return RunStatistics.counters(stats, self.name)

    def fetch(self, *args, **kwargs):
        raise UserError("Triton serves no files: put the head into the edge's cache with `cli.py push BUNDLE --to`")

    def close(self):
        self._closed.set()
        if self._poller is not None:
            self._poller.join(5)
        try:
            self.client.close()
        except Exception:  # closing a client whose server is gone
            pass


class KServePipe(object):
    """Up to ``depth`` requests in flight (``--inflight``), answered in the order sent (measure's pipe interface).

    gRPC: ``async_infer`` calls back on tritonclient's thread with the arrival time;
    HTTP: ``async_infer`` returns a handle whose result is awaited in order."""

    def __init__(self, conn, depth):
        self.conn, self.depth = conn, depth
        self.pending = collections.deque()

    def full(self):
        return len(self.pending) >= self.depth

    def send(self, array, meta, context):
        conn = self.conn
        array = np.ascontiguousarray(array)
        inputs, outputs = conn._inputs(array)
        t0 = time.perf_counter()
        if conn.scheme == "grpc":
            handle = _Callback()
            conn._call(conn.client.async_infer, conn.name, inputs, handle, model_version=conn.version,
                       outputs=outputs, **conn.per_call)
        else:
            handle = conn._call(conn.client.async_infer, conn.name, inputs, model_version=conn.version,
                                outputs=outputs)
        self.pending.append((handle, t0, array.nbytes, context))

    def next(self):
        handle, t0, sent, context = self.pending[0]
        conn = self.conn
        if isinstance(handle, _Callback):
            result, arrived = handle.wait(conn.timeout, conn)
        else:
            result = conn._call(handle.get_result, block=True, timeout=conn.timeout)
            arrived = time.perf_counter()
        self.pending.popleft()
        out = result.as_numpy(conn.output_name)
        return conn._reply(out), (arrived - t0) * 1000.0, sent, out.nbytes, context

    def close(self):
        pass

    def abandon(self):
        self.pending.clear()


class _Callback(object):
    """gRPC ``async_infer``'s callback, kept with the reply's arrival time until ``wait`` takes it."""

    def __init__(self):
        self._done = threading.Event()
        self.result = self.error = None
        self.arrived = None

    def __call__(self, result, error):
        self.arrived = time.perf_counter()
        self.result, self.error = result, error
        self._done.set()

    def wait(self, timeout, conn):
        if not self._done.wait(timeout):
            raise CloudLost("no reply from Triton at {} within {:.0f} s".format(conn.address, timeout))
        if self.error is not None:
            raise conn._translate(self.error)
        return self.result, self.arrived


class RunStatistics(object):
    """The cloud's figures of a run against Triton, from its per-model counters.

    ``begin(conn)`` notes the counters after the warm-up; ``end()`` takes them again
    and adds the difference (a switch to another model ends one segment and begins
    the next); ``per_request()`` is (compute ms, queue ms, requests, executions) over
    the segments: compute = input + infer + output durations over the requests
    counted, queue = queue duration over the same.  When the server is lost, its
    counters go with it: ``lost(new_conn)`` drops the open segment and starts one on
    the new connection, so the requests that server answered are in no segment.
    """

    FIELDS = ("requests", "executions", "compute_ns", "queue_ns")

    def __init__(self):
        self.totals = dict.fromkeys(self.FIELDS, 0)
        self.conn = self.start = None

    @staticmethod
    def counters(stats, name):
        """The counters of model ``name`` in a statistics answer, summed over its versions listed."""
        totals = dict.fromkeys(RunStatistics.FIELDS, 0)
        for model in stats.get("model_stats", []):
            if model.get("name") != name:
                continue
            inference = model.get("inference_stats", {})
            ns = {key: int(inference.get(key, {}).get("ns", 0))
                  for key in ("compute_input", "compute_infer", "compute_output", "queue")}
            totals["requests"] += int(inference.get("success", {}).get("count", 0))
            totals["executions"] += int(model.get("execution_count", 0))
            totals["compute_ns"] += ns["compute_input"] + ns["compute_infer"] + ns["compute_output"]
            totals["queue_ns"] += ns["queue"]
        return totals

    def begin(self, conn):
        self.conn, self.start = conn, conn.statistics()

    def end(self):
        if self.conn is None:
            return
        try:
            now = self.conn.statistics()
        except (CloudLost, CannotConnect):
            return
        for key in self.FIELDS:
            self.totals[key] += max(now[key] - self.start[key], 0)
        self.conn = self.start = None

    def lost(self, conn):
        """The server was lost (its counters with it): drop the segment, start one on the new connection."""
        self.begin(conn)

    def per_request(self):
        t = self.totals
        n = t["requests"]
        if not n:
            return 0.0, 0.0, 0, t["executions"]
        return t["compute_ns"] / 1e6 / n, t["queue_ns"] / 1e6 / n, n, t["executions"]
