"""Deployment: bundles move between machines verified, atomically, once.

* ``send_files`` / ``receive_files``: a bundle's files as CHUNK frames (at most
  1 MiB each) ended by DONE, over the protocol's connection; the receiver writes
  into a hidden temporary directory and checks every size and sha256 against the
  manifest before anything becomes visible.
* ``BundleCache``: the edge's store of heads (``--cache``, default ``artifacts/``),
  looked up by bundle id, verified on use, keeping the newest ``--cache-keep``.
* ``push_to_cloud`` (upload with the admin token) and ``copy_bundle`` (to a local
  directory, e.g. an SD card, for devices with no network path).

Python 3.6 syntax: this module runs on the Jetson.
"""
import contextlib
import hashlib
import hmac
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from . import protocol as p
from .errors import UserError
from .manifest import (MANIFEST_NAME, ManifestError, directory_name, install_dir, iter_file_entries,
                       load_manifest, validate, write_manifest)

TOKEN_ENV = "EDGESPLIT_ADMIN_TOKEN"


def token_proof(token, nonce):
    """What proves knowledge of the admin token without sending it: HMAC-SHA256(token, server nonce)."""
    return hmac.new(token.encode("utf-8"), nonce.encode("utf-8"), hashlib.sha256).hexdigest()


def file_entries(manifest_data, parts=("head", "tail", "segments"), formats=("onnx", "torchscript")):
    return [f for part, fmt, f in iter_file_entries(manifest_data) if part in parts and fmt in formats]


# ---------------------------------------------------------------- transfer

def send_files(sock, directory, entries):
    """Stream files as CHUNK frames, then DONE; return the bytes sent."""
    sent = 0
    buf = bytearray(p.CHUNK_BYTES)
    for entry in entries:
        with open(os.path.join(directory, entry["file"]), "rb") as f:
            offset = 0
            while True:
                n = f.readinto(buf)
                if not n and offset:
                    break
                chunk = np.frombuffer(buf, dtype=np.uint8, count=n)
                sent += p.send_frame(sock, p.CHUNK, 0, {"file": entry["file"], "offset": offset}, chunk)
                offset += n
                if not n:
                    break
    return sent + p.send_frame(sock, p.DONE, 0, {"files": len(entries)})


def _chunk_check(type_, dtype, shape, meta=None):
    if type_ == p.CHUNK and (dtype != "uint8" or len(shape) != 1 or shape[0] > p.CHUNK_BYTES):
        raise p.ProtocolError("bad_chunk", "file chunks are 1-D uint8 of at most {} bytes".format(p.CHUNK_BYTES))


def receive_files(reader, directory, entries, what="transfer"):
    """Read CHUNK frames into ``directory`` until DONE; check every size and sha256; return bytes received."""
    expected = {e["file"]: e for e in entries}
    written = dict((name, 0) for name in expected)
    digests = dict((name, hashlib.sha256()) for name in expected)
    handles = {}
    start = reader.bytes_received
    try:
        while True:
            frame = reader.read(tensor_check=_chunk_check)
            if frame.type == p.DONE:
                break
            if frame.type == p.ERROR:
                raise p.RemoteError(frame.meta.get("code", "error"), "cloud: {}".format(frame.meta.get("message")))
            if frame.type != p.CHUNK:
                raise p.ProtocolError("bad_frame", "{} in the middle of a file transfer".format(frame.type_name))
            name, offset = frame.meta.get("file"), frame.meta.get("offset")
            if name not in expected:
                raise p.ProtocolError("bad_file", "{}: file {!r} is not in the manifest".format(what, name))
            if offset != written[name]:
                raise p.ProtocolError("bad_file", "{}: {} chunk at offset {}, expected {}".format(
                    what, name, offset, written[name]))
            data = frame.array
            if written[name] + len(data) > expected[name]["bytes"]:
                raise p.ProtocolError("bad_file", "{}: {} is longer than the manifest's {} bytes".format(
                    what, name, expected[name]["bytes"]))
            if name not in handles:
                handles[name] = open(os.path.join(directory, name), "wb")
            try:
                handles[name].write(data)
            except OSError as exc:
                raise UserError("cannot write {} into {} ({}); free some space or choose another directory".format(
                    name, directory, exc.strerror or exc))
            digests[name].update(data)
            written[name] += len(data)
    finally:
        for h in handles.values():
            h.close()
    for name, entry in expected.items():
        if written[name] != entry["bytes"]:
            raise p.ProtocolError("bad_file", "{}: {} is truncated: {} of {} bytes".format(
                what, name, written[name], entry["bytes"]))
        actual = digests[name].hexdigest()
        if actual != entry["sha256"]:
            raise p.ProtocolError("bad_file", "{}: {} has sha256 {} but the manifest says {}".format(
                what, name, actual, entry["sha256"]))
    return reader.bytes_received - start


TEMP_KINDS = ("fetch", "push", "copy")


def temp_dir(root, kind):
    """A hidden temporary directory ``.tmp-KIND-PID-*`` in ``root`` (its pid lets a stale one be removed)."""
    os.makedirs(root, exist_ok=True)
    return tempfile.mkdtemp(prefix=".tmp-{}-{}-".format(kind, os.getpid()), dir=root)


def remove_stale_temp_dirs(root):
    """Delete the transfer directories of processes that died mid-transfer (nothing else: an export may be running)."""
    if not os.path.isdir(root):
        return
    for name in os.listdir(root):
        parts = name.split("-")
        if len(parts) > 3 and parts[0] == ".tmp" and parts[1] in TEMP_KINDS and parts[2].isdigit() \
                and not _alive(int(parts[2])):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------- the edge's cache

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
            tmp = temp_dir(self.root, "fetch")
            try:
                received = conn.fetch(manifest_data["bundle_id"], formats, tmp, entries, part)
                write_manifest(tmp, manifest_data)
                install_dir(tmp, self.directory(manifest_data))
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            seconds = time.perf_counter() - started
            self.prune()
            return load_manifest(self.directory(manifest_data)), received, seconds

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


# ---------------------------------------------------------------- push and copy

def _verified(bundle):
    manifest = load_manifest(bundle)
    manifest.verify_files()
    return manifest


def push_to_cloud(bundle, cloud, token, activate=False, timeout=120.0, security=None):
    """Upload a bundle to serve-cloud; return the server's DONE metadata."""
    from .edge import CloudConnection
    if not token:
        raise UserError("push needs the server's admin token: --admin-token TOKEN or ${}".format(TOKEN_ENV))
    manifest = _verified(bundle)
    conn = CloudConnection(cloud, timeout, security=security)
    try:
        nonce = conn.hello({"role": "admin"}).get("nonce")
        if not nonce:
            raise UserError("the cloud at {} did not offer an admin handshake".format(cloud))
        conn.send(p.PUSH, {"manifest": manifest.data, "activate": bool(activate), "proof": token_proof(token, nonce)})
        ready = conn.expect(p.READY)
        sent = 0
        if not ready.meta.get("have"):
            sent = send_files(conn.sock, manifest.directory, file_entries(manifest.data))
        done = conn.expect(p.DONE).meta
        done["bytes_sent"] = sent
        return done
    finally:
        conn.close()


def copy_bundle(bundle, destination_root):
    """Copy a verified bundle into ``destination_root`` atomically; verify the copy; return its directory."""
    manifest = _verified(bundle)
    try:
        tmp = temp_dir(destination_root, "copy")
    except OSError as exc:
        raise UserError("cannot write to {} ({})".format(destination_root, exc.strerror or exc))
    try:
        for entry in file_entries(manifest.data):
            shutil.copyfile(os.path.join(manifest.directory, entry["file"]), os.path.join(tmp, entry["file"]))
        with open(os.path.join(tmp, MANIFEST_NAME), "w") as f:
            json.dump(validate(manifest.data, bundle), f, indent=2)
        load_manifest(tmp).verify_files()
        target = os.path.join(destination_root, directory_name(manifest.data))
        install_dir(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError("copy to {} failed ({}); nothing was left there".format(destination_root,
                                                                                 exc.strerror or exc))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
