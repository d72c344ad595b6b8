"""The tails serve-cloud holds: every bundle of its store, each loaded once on first
use and shared by all connections; the active bundle per model (hot swap); pushed
bundles installed; with ``--model``, splits exported on demand in a child process
(``cli.py export``), so the runtime never imports the exporter.
"""
import json
import logging
import os
import subprocess
import threading

from runtime.backends import backend_for, load_part
from runtime.backends.profiling import profile_segments
from runtime.bundle.manifest import KIND_SEGMENTS, KIND_SPLIT, directory_name, load_manifest, write_manifest
from runtime.bundle.schema import split_order
from runtime.bundle.staging import install_dir
from runtime.errors import CodedError, UserError
from runtime.launch import cli_command


class HandshakeError(CodedError):
    """A HELLO (or FETCH, PROFILE) that cannot be served: the code and message go back in an ERROR frame."""


log = logging.getLogger("edgesplit.server")


EXPORT_TIMEOUT_S = 1800
ACTIVE_FILE = ".active.json"  # in the store: model id -> the bundle id `push --activate` made active (hidden: no bundle)


class OnDemandExporter(object):
    """Exports a missing split of one model by running ``cli.py export`` (the runtime never imports the exporter).

    ``model`` is serve-cloud's ``--model`` as the exporter takes it (``resnet50``, ``torchvision:NAME``,
    ``package.module:function``); edges name the model by the id its manifests carry (``torchvision-NAME``, ...),
    which ``describe`` asks the exporter for (``cli.py layers --json``) when the server starts: a --model the
    exporter cannot build stops serve-cloud then, not at the first edge."""

    def __init__(self, model, weights=None, random_init=False, input_shape=None):
        self.model = model
        self.model_id = None  # set by describe()
        self.weights = weights
        self.random_init = random_init
        self.input_shape = input_shape

    def describe(self):
        """Learn the model's id from the exporter, which also loads the weights the exports will load (``--weights``,
        else the model's default file, unless ``--random-init``); raise UserError if it cannot build the model or
        the weights do not fit it, so that serve-cloud stops at start and not an edge's export later."""
        described = self._layers()
        if self.weights is None and not self.random_init:
            default = described["default_weights"]
            if not default or not os.path.isfile(default):
                raise UserError("serve-cloud --model {} has no weights to export it with: no --weights, and {}; give "
                                "--weights PATH (a state dict of the model), or --random-init for untrained weights "
                                "(chance-level accuracy)".format(self.model, "no {} here".format(default) if default
                                                                 else "the model has no default weights file"))
            self.weights = default  # what its exports would load: checked now, and named in the log
            described = self._layers()
        self.model_id = described["model"]
        return self.model_id

    def _layers(self):
        """``cli.py layers --json`` of the model (with ``--weights``: loaded as its exports will load them)."""
        out, failed = self._run("layers", "--json", *(["--weights", self.weights] if self.weights else []))
        if failed:
            why = "its exports would fail with weights {}".format(self.weights) if self.weights else \
                "the exporter cannot build it"
            raise UserError("serve-cloud --model {}: {} ({})".format(self.model, why, failed))
        return json.loads(out)

    def export(self, split, out_dir):
        """Export one split (``split`` an int) or the profiling segments (``split`` None)."""
        where = ["--split", str(split)] if split is not None else ["--segments"]
        weights = ["--weights", self.weights] if self.weights else (["--random-init"] if self.random_init else [])
        _, failed = self._run("export", *(where + ["--store", out_dir] + weights))
        if failed:
            raise HandshakeError("export_failed", "export of {} {} on the cloud failed: {}".format(
                self.model, "split {}".format(split) if split is not None else "segments", failed))

    def _run(self, command, *args):
        """``cli.py COMMAND --model M ARGS [--input-shape S]``: (its stdout, None), or (stdout, the last line
        of its stderr) when it fails."""
        argv = cli_command(command, "--model", self.model, *args)
        if self.input_shape:
            argv += ["--input-shape", self.input_shape]
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                              timeout=EXPORT_TIMEOUT_S)
        if proc.returncode == 0:
            return proc.stdout, None
        lines = [l for l in proc.stderr.splitlines() if l.strip()]
        return proc.stdout, _without_prefix(lines[-1]) if lines else "exit {}".format(proc.returncode)


def _without_prefix(line, prefix="error: "):
    """A command's error line without the ``error: `` it starts with (the line is quoted inside another)."""
    return line[len(prefix):] if line.startswith(prefix) else line


def _why_one_format(manifest):
    post = manifest["output"].get("postprocess")
    return "it ends with {}".format(post.get("by")) if post else "it was exported so"


class TailRegistry(object):
    """The server's bundles: found on disk by id, each tail loaded once and shared, one active per model."""

    def __init__(self, store, backend="onnx", device="auto", threads=0, exporter=None, cuda_graphs=False):
        self.store = store
        self.backend = backend
        self.device = device
        self.threads = threads
        self.cuda_graphs = cuda_graphs
        self.exporter = exporter
        self.active = self._restore_active()  # model id -> bundle id, as the last activation left it
        self._lock = threading.Lock()
        self._loaded = {}    # bundle id -> (manifest, runner)
        self._loading = {}   # bundle id -> lock, so each tail is loaded once
        self._exports = {}   # (model, split) -> threading.Event while an export runs
        self._profile_lock = threading.Lock()
        self._profiles = {}  # (segments bundle id, batch size) -> profile

    def bundles(self):
        """The split bundles in the store (what inference can use)."""
        return self.store.scan(KIND_SPLIT)[0]

    def find(self, model, split=None):
        """The split bundle of ``model`` at ``split`` in the store (split None: its segments bundle), or None."""
        kind = KIND_SEGMENTS if split is None else KIND_SPLIT
        for m in self.store.scan(kind)[0]:
            if m.model_id == model and (split is None or m.split_index == split):
                return m
        return None

    def models(self):
        """What the store holds and the server would export, per model id: ``{"splits": [held split indexes],
        "on_demand": whether serve-cloud --model exports its missing splits}`` (STATUS's ``models``)."""
        held = {}
        for m in self.bundles():
            held.setdefault(m.model_id, set()).add(m.split_index)
        if self.exporter is not None and self.exporter.model_id:
            held.setdefault(self.exporter.model_id, set())
        return {model: {"splits": sorted(splits, key=split_order), "on_demand": self.exporter is not None and
                        self.exporter.model_id == model} for model, splits in held.items()}

    def held(self, bundle_id):
        """The bundle (of any kind) with this id in the store, or None."""
        for m in self.store.scan()[0]:
            if m.bundle_id == bundle_id:
                return m
        return None

    def manifest(self, bundle_id):
        """A held bundle's manifest (for fetches), or a HandshakeError."""
        with self._lock:
            if bundle_id in self._loaded:
                return self._loaded[bundle_id][0]
        manifest = self.held(bundle_id)
        if manifest is None:
            raise HandshakeError("unknown_bundle", "the cloud holds no bundle {}".format(bundle_id))
        return manifest

    def load(self, manifest):
        """The tail runner of a bundle, loaded on first use only (concurrent first uses wait for one load)."""
        with self._lock:
            if manifest.bundle_id in self._loaded:
                return self._loaded[manifest.bundle_id]
            lock = self._loading.setdefault(manifest.bundle_id, threading.Lock())
        with lock:
            with self._lock:
                if manifest.bundle_id in self._loaded:
                    return self._loaded[manifest.bundle_id]
            manifest.verify_files(parts=("tail",))
            backend = backend_for(manifest, "tail", self.backend)
            if backend != self.backend:
                log.info("the tail of %s exists as %s only (%s): it runs with that backend", manifest.bundle_id,
                         backend, _why_one_format(manifest))
            post = manifest["output"].get("postprocess")
            if post and self.cuda_graphs:
                log.info("the tail of %s ends with %s, whose shapes follow the data: it runs without CUDA graphs",
                         manifest.bundle_id, post.get("by"))
            runner = load_part(manifest, "tail", backend, self.device, self.threads, self.cuda_graphs and not post)
            log.info("loaded tail of %s (%s split %s) with %s on %s", manifest.bundle_id, manifest.model_id,
                     manifest.split_index, runner.name, runner.provider)
            with self._lock:
                self._loaded[manifest.bundle_id] = (manifest, runner)
            return manifest, runner

    def resolve(self, model, split, bundle_id, notify):
        """The (manifest, runner) an edge asks for: by id, by split (exported on demand), or the active one."""
        if bundle_id:
            with self._lock:
                if bundle_id in self._loaded:
                    return self._loaded[bundle_id]
            manifest = self.held(bundle_id)
            if manifest is not None and manifest.kind != KIND_SPLIT:
                raise HandshakeError("unknown_bundle", "bundle {} holds profiling segments, not a split".format(
                    bundle_id))
            if manifest is None:
                same = [m for m in self.bundles() if m.model_id == model and m.split_index == split]
                if same:
                    raise HandshakeError("bundle_mismatch", "the edge's bundle {} for {} split {} is not the cloud's "
                                         "({}): head and tail come from different exports; copy one bundle to "
                                         "both".format(bundle_id, model, split,
                                                       ", ".join(m.bundle_id for m in same)))
                raise HandshakeError("unknown_bundle", "the cloud holds no bundle {} ({} split {}); push it with "
                                     "`cli.py push`".format(bundle_id, model, split))
            return self.load(manifest)
        if split is None:
            with self._lock:
                active = self.active.get(model)
            if active is None:
                held = sorted((m.split_index for m in self.bundles() if m.model_id == model), key=split_order)
                raise HandshakeError("no_active", "no bundle is active for {} on the cloud; give --split ({}) or "
                                     "push one with --activate".format(model, ", ".join(map(str, held)) or
                                                                         "none held"))
            return self.load(self.manifest(active))
        return self.load(self._for_split(model, split, notify))

    def _for_split(self, model, split, notify):
        while True:
            found = self.find(model, split)
            if found is not None:
                return found
            if self.exporter is None or self.exporter.model_id != model:
                held = [m.label for m in self.bundles()]
                raise HandshakeError("unknown_bundle", "the cloud holds no bundle for {} split {} (it holds: {}); "
                                     "export it on the cloud, or start serve-cloud with --model {}".format(
                                         model, split, ", ".join(held) or "none", model))
            with self._lock:
                event = self._exports.get((model, split))
                mine = event is None
                if mine:
                    event = self._exports[(model, split)] = threading.Event()
            notify("the cloud is exporting {} split {} for this edge; this takes a minute".format(model, split))
            if not mine:
                event.wait(EXPORT_TIMEOUT_S)
                continue
            try:
                log.info("exporting %s split %s on demand", model, split)
                self.exporter.export(split, self.store.root)
                log.info("exported %s split %s", model, split)
            finally:
                with self._lock:
                    del self._exports[(model, split)]
                event.set()
            found = self.find(model, split)
            if found is not None:
                return found
            raise HandshakeError("export_failed", "the export of {} split {} wrote no bundle".format(model, split))

    def segments(self, model, notify):
        """The segments bundle of a model (exported on demand when the server can)."""
        found = self.find(model)
        if found is not None:
            return found
        if self.exporter is None or self.exporter.model_id != model:
            raise HandshakeError("no_segments", "the cloud holds no segments bundle for {}; run `cli.py export "
                                 "--model {} --segments` on the cloud, or start serve-cloud with --model {}".format(
                                     model, model, model))
        with self._profile_lock:
            found = self.find(model)
            if found is not None:
                return found
            notify("the cloud is exporting the segments of {} for profiling; this takes a minute".format(model))
            self.exporter.export(None, self.store.root)
        found = self.find(model)
        if found is not None:
            return found
        raise HandshakeError("export_failed", "the export of {} segments wrote no bundle".format(model))

    def profile(self, model, batch_size, notify):
        """The server's own profile of a model's segments (measured once per batch size, then kept)."""
        manifest = self.segments(model, notify)
        with self._profile_lock:
            key = (manifest.bundle_id, batch_size)
            if key not in self._profiles:
                manifest.verify_files(parts=("segments",))
                notify("the cloud is profiling {} at batch size {}".format(model, batch_size))
                self._profiles[key] = profile_segments(manifest, self.backend, self.device, batch_size, self.threads)
                log.info("profiled %s segments at batch %d: %.3f ms in all", model, batch_size,
                         sum(self._profiles[key]["segment_ms"]))
            return manifest, self._profiles[key]

    def install(self, tmp, data, activate):
        """Make a pushed bundle (files verified in ``tmp``) visible, load its tail, maybe activate it."""
        write_manifest(tmp, data)
        target = os.path.join(self.store.root, directory_name(data))
        install_dir(tmp, target)
        manifest = load_manifest(target)
        if manifest.kind == KIND_SPLIT:
            self.load(manifest)
            if activate:
                self.activate(manifest)
        return manifest

    def activate(self, manifest):
        with self._lock:
            self.active[manifest.model_id] = manifest.bundle_id
            self._save_active()
        log.info("active bundle for %s is now %s (split %s)", manifest.model_id, manifest.bundle_id,
                 manifest.split_index)

    def _save_active(self):
        """Write the active bundles into the store (under the lock), replacing the file in one rename, so that a
        restarted serve-cloud serves the same ones."""
        path = os.path.join(self.store.root, ACTIVE_FILE)
        tmp = "{}.tmp-{}".format(path, os.getpid())
        try:
            with open(tmp, "w") as f:
                json.dump(self.active, f, indent=1, sort_keys=True)
                f.write("\n")
            os.replace(tmp, path)
        except OSError as exc:  # the activation stands; only a restart would forget it
            log.warning("could not record the active bundles in %s (%s): a restart will forget them", path, exc)

    def _restore_active(self):
        """The active bundles the store's ACTIVE_FILE names, each kept only where the store still holds that bundle
        of that model (one removed since is dropped, with a warning); {} without the file."""
        path = os.path.join(self.store.root, ACTIVE_FILE)
        try:
            with open(path) as f:
                named = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring %s: %s", path, exc)
            return {}
        if not isinstance(named, dict):
            log.warning("ignoring %s: not a JSON object", path)
            return {}
        held = {(m.model_id, m.bundle_id): m for m in self.bundles()}
        active = {}
        for model, bundle_id in sorted(named.items()):
            manifest = held.get((model, bundle_id))
            if manifest is None:
                log.warning("the active bundle for %s was %s, which the store no longer holds: none is active",
                            model, bundle_id)
                continue
            active[model] = bundle_id
            log.info("active bundle for %s is %s (%s), as before the restart", model, bundle_id, manifest.label)
        return active

    def active_for(self, model):
        with self._lock:
            return self.active.get(model)
