"""The edge's store of heads (``--cache``, default ``artifacts/``): looked up by
bundle id, verified on use, fetched into a staged directory when missing, keeping
the newest ``--cache-keep``.

Python 3.6 syntax: this module runs on the Jetson.
"""
import contextlib
import os
import shutil
import sys
import time

from runtime.bundle.manifest import MANIFEST_NAME, ManifestError, directory_name, load_manifest, write_manifest
from runtime.bundle.staging import install_dir, remove_stale_temp_dirs, staged
from runtime.wire.transfer import file_entries


class BundleCache(object):
    """Heads fetched from the cloud, one directory per model and split, found by bundle id."""

    def __init__(self, root, keep=8, log=None):
        self.root = root
        self.keep = max(1, keep)
        self.log = log or (lambda msg: sys.stderr.write(msg + "\n"))
        remove_stale_temp_dirs(root)

    def directory(self, manifest_data):
        return os.path.join(self.root, directory_name(manifest_data))

    def lookup(self, manifest_data, formats, part="head"):
        """The cached bundle with this id and a verified ``part``, or None (a corrupt entry is deleted)."""
        directory = self.directory(manifest_data)
        try:
            cached = load_manifest(directory)
        except ManifestError:
            return None
        if cached.bundle_id != manifest_data["bundle_id"]:
            return None
        try:
            cached.verify_files(parts=(part,), formats=formats)
        except ManifestError as exc:
            self.log("cache: {}; deleting it and fetching again".format(exc))
            shutil.rmtree(directory, ignore_errors=True)
            return None
        os.utime(directory, None)  # most recently used
        return cached

    def fetch(self, conn, manifest_data, formats, part="head"):
        """Download the ``part`` files of a bundle over ``conn``, verify, store atomically; return (Manifest, bytes, s).

        Several edges may share one cache (e.g. processes on one device): a fetch holds
        the cache's lock file, and one that waited finds the bundle already there (0 bytes).
        """
        started = time.perf_counter()
        with self._locked():
            cached = self.lookup(manifest_data, formats, part)
            if cached is not None:
                return cached, 0, time.perf_counter() - started
            entries = file_entries(manifest_data, (part,), formats)
            with staged(self.root, "fetch") as tmp:
                received = conn.fetch(manifest_data["bundle_id"], formats, tmp, entries, part)
                write_manifest(tmp, manifest_data)
                install_dir(tmp, self.directory(manifest_data))
            seconds = time.perf_counter() - started
            self.prune()
            return load_manifest(self.directory(manifest_data)), received, seconds

    def has_part(self, manifest_data, formats, part):
        """Whether the cached bundle with this id holds ``part``'s files (verified on use, as every part)."""
        cached = self.lookup(manifest_data, formats, "head")
        if cached is None:
            return False
        try:
            cached.verify_files(parts=(part,), formats=formats)
        except ManifestError:
            return False
        return True

    def add_part(self, conn, manifest_data, formats, part):
        """Fetch ``part`` of a bundle whose head is cached into its directory (a new directory with both, renamed
        into place, as every install); returns its Manifest."""
        with self._locked():
            directory = self.directory(manifest_data)
            with staged(self.root, "fetch") as tmp:
                for name in os.listdir(directory):
                    if not name.startswith("."):  # the head's files and manifest; onnxruntime's graphs are remade
                        shutil.copy2(os.path.join(directory, name), os.path.join(tmp, name))
                conn.fetch(manifest_data["bundle_id"], formats, tmp, file_entries(manifest_data, (part,), formats), part)
                install_dir(tmp, directory)
            return load_manifest(directory)

    @contextlib.contextmanager
    def _locked(self):
        """An exclusive lock on ``<cache>/.lock`` (flock; a no-op where fcntl does not exist)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not Linux
            yield
            return
        os.makedirs(self.root, exist_ok=True)
        with open(os.path.join(self.root, ".lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def prune(self):
        entries = [os.path.join(self.root, d) for d in os.listdir(self.root)
                   if not d.startswith(".") and os.path.isfile(os.path.join(self.root, d, MANIFEST_NAME))]
        entries.sort(key=os.path.getmtime, reverse=True)
        for directory in entries[self.keep:]:
            shutil.rmtree(directory, ignore_errors=True)
