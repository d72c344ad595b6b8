"""Files over the protocol: a bundle's files as CHUNK frames (at most 1 MiB each)
ended by DONE.  The receiver writes into a directory it was given (a staged one,
see ``bundle.staging``) and checks every size and sha256 against the manifest's
entries before the caller makes anything visible.

Python 3.6 syntax: this module runs on the Jetson.
"""
import hashlib
import os

import numpy as np

from runtime.bundle.manifest import iter_file_entries
from runtime.errors import UserError
from runtime.wire import codec, sockets


def file_entries(manifest_data, parts=("head", "tail", "segments"), formats=("onnx", "torchscript")):
    return [f for part, fmt, f in iter_file_entries(manifest_data) if part in parts and fmt in formats]


def send_files(sock, directory, entries):
    """Stream files as CHUNK frames, then DONE; return the bytes sent."""
    sent = 0
    buf = bytearray(codec.CHUNK_BYTES)
    for entry in entries:
        with open(os.path.join(directory, entry["file"]), "rb") as f:
            offset = 0
            while True:
                n = f.readinto(buf)
                if not n and offset:
                    break
                chunk = np.frombuffer(buf, dtype=np.uint8, count=n)
                sent += sockets.send_frame(sock, codec.CHUNK, 0, {"file": entry["file"], "offset": offset}, chunk)
                offset += n
                if not n:
                    break
    return sent + sockets.send_frame(sock, codec.DONE, 0, {"files": len(entries)})


def _chunk_check(type_, dtype, shape, meta=None):
    if type_ == codec.CHUNK and (dtype != "uint8" or len(shape) != 1 or shape[0] > codec.CHUNK_BYTES):
        raise codec.ProtocolError("bad_chunk", "file chunks are 1-D uint8 of at most {} bytes".format(codec.CHUNK_BYTES))


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
            if frame.type == codec.DONE:
                break
            if frame.type == codec.ERROR:
                raise codec.RemoteError(frame.meta.get("code", "error"), "cloud: {}".format(frame.meta.get("message")))
            if frame.type != codec.CHUNK:
                raise codec.ProtocolError("bad_frame", "{} in the middle of a file transfer".format(frame.type_name))
            name, offset = frame.meta.get("file"), frame.meta.get("offset")
            if name not in expected:
                raise codec.ProtocolError("bad_file", "{}: file {!r} is not in the manifest".format(what, name))
            if offset != written[name]:
                raise codec.ProtocolError("bad_file", "{}: {} chunk at offset {}, expected {}".format(
                    what, name, offset, written[name]))
            data = frame.array
            if written[name] + len(data) > expected[name]["bytes"]:
                raise codec.ProtocolError("bad_file", "{}: {} is longer than the manifest's {} bytes".format(
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
            raise codec.ProtocolError("bad_file", "{}: {} is truncated: {} of {} bytes".format(
                what, name, written[name], entry["bytes"]))
        actual = digests[name].hexdigest()
        if actual != entry["sha256"]:
            raise codec.ProtocolError("bad_file", "{}: {} has sha256 {} but the manifest says {}".format(
                what, name, actual, entry["sha256"]))
    return reader.bytes_received - start
