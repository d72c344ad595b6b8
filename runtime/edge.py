"""run-edge: run the head on this device, the tail on the cloud, and report as the seed did.

Needs numpy and onnxruntime only (torch for ``--backend torchscript``).
Python 3.6 syntax: this module runs on the Jetson.
"""
import socket
import sys
import time

import numpy as np

from . import protocol as p
from .backends import load_part
from .data import batches, open_dataset, preprocess_batch
from .errors import UserError
from .report import RunRecorder, format_report, write_report
from .store import BundleStore


class CloudConnection(object):
    """One TCP connection to serve-cloud, speaking the protocol of docs/PROTOCOL.md."""

    def __init__(self, address, timeout=30.0, max_frame_bytes=p.DEFAULT_MAX_FRAME_BYTES):
        host, port = p.parse_address(address)
        self.address = address
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise UserError("cannot connect to the cloud at {} ({}); is `cli.py serve-cloud` running there?".format(
                address, exc.strerror or exc))
        self.sock.settimeout(timeout)
        p.tune_socket(self.sock)
        self.reader = p.FrameReader(self.sock, max_frame_bytes, allowed_types=(p.WELCOME, p.RESULT, p.ERROR))
        self._next_id = 1

    def _receive(self, request_id):
        try:
            frame = self.reader.read()
        except p.PeerClosed:
            raise UserError("the cloud at {} closed the connection".format(self.address))
        except socket.timeout:
            raise UserError("no reply from the cloud at {} within {:.0f} s".format(
                self.address, self.sock.gettimeout()))
        if frame.type == p.ERROR:
            raise p.RemoteError(frame.meta.get("code", "error"), "cloud: {}".format(frame.meta.get("message", "")))
        if frame.request_id != request_id:
            raise p.ProtocolError("bad_reply", "reply to request {} while waiting for {}".format(
                frame.request_id, request_id))
        return frame

    def hello(self, manifest):
        request_id = self._take_id()
        p.send_frame(self.sock, p.HELLO, request_id, {
            "model": manifest.model_id, "split": manifest.split_index, "bundle_id": manifest.bundle_id,
            "protocol": p.VERSION})
        frame = self._receive(request_id)
        if frame.type != p.WELCOME:
            raise p.ProtocolError("bad_reply", "expected WELCOME, got {}".format(frame.type_name))
        return frame.meta

    def infer(self, array):
        """Send one activation, wait for its result; return (result, cloud_ms, bytes sent, bytes received)."""
        request_id = self._take_id()
        before = self.reader.bytes_received
        sent = p.send_frame(self.sock, p.INFER, request_id, {}, array)
        frame = self._receive(request_id)
        if frame.type != p.RESULT:
            raise p.ProtocolError("bad_reply", "expected RESULT, got {}".format(frame.type_name))
        return frame.array, float(frame.meta.get("cloud_ms", 0.0)), sent, self.reader.bytes_received - before

    def _take_id(self):
        request_id = self._next_id
        self._next_id += 1
        return request_id

    def close(self):
        try:
            p.send_frame(self.sock, p.BYE, 0, {})
        except OSError:
            pass
        self.sock.close()


def _progress(total, enabled):
    """tqdm when it is installed and wanted (it is not an edge dependency)."""
    if enabled:
        try:
            from tqdm import tqdm
            return tqdm(total=total, unit="sample", file=sys.stderr, leave=False)
        except ImportError:
            pass
    return None


def run_edge(cloud, model="resnet50", split=20, artifacts="artifacts", backend="onnx", device="auto",
             dataset="cifar100", data_dir="data", limit=100, batch_size=1, shuffle=False, seed=0, warmup=3,
             verbose=False, report=None, timeout=30.0, threads=0, out=None):
    """The run-edge command.  Returns the report dict; prints the seed's report to ``out``."""
    out = out or sys.stdout
    if batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    manifest = BundleStore(artifacts).find(model, split)
    manifest.verify_files(parts=("head",))
    head = load_part(manifest, "head", backend, device, threads)
    num_classes = manifest["output"]["shape"][-1]
    data = open_dataset(dataset, manifest["input"], num_classes, limit=limit, seed=seed, data_dir=data_dir)
    plan = batches(data, batch_size, limit, shuffle, seed)
    if not plan:
        raise UserError("the dataset {} is empty".format(dataset))
    preprocess = manifest["input"].get("preprocess") or {}

    conn = CloudConnection(cloud, timeout)
    try:
        welcome = conn.hello(manifest)
        recorder = RunRecorder()
        first = preprocess_batch(data.images(plan[0]), preprocess)
        for _ in range(warmup):  # excluded from every figure, counted in the report
            conn.infer(head.run(first))
            recorder.warmup_requests += 1
        bar = _progress(sum(len(b) for b in plan), not verbose and sys.stderr.isatty())
        started = time.perf_counter()
        for indices in plan:
            x = preprocess_batch(data.images(indices), preprocess)
            t0 = time.perf_counter()
            boundary = head.run(x)
            t1 = time.perf_counter()
            result, cloud_ms, sent, received = conn.infer(boundary)
            t2 = time.perf_counter()
            predictions = result.reshape(len(indices), -1).argmax(axis=1)
            labels = data.labels[indices]
            recorder.add((t1 - t0) * 1000.0, (t2 - t1) * 1000.0, cloud_ms, predictions, labels, sent, received)
            if verbose:
                for pred, label in zip(predictions, labels):
                    out.write("Prediction: {} / Ground Truth: {}\n".format(int(pred), int(label)))
            if bar is not None:
                bar.update(len(indices))
        recorder.wall_s = time.perf_counter() - started
        if bar is not None:
            bar.close()
    finally:
        conn.close()

    summary = recorder.summary()
    out.write(format_report(summary, recorder.samples, len(plan), recorder.warmup_requests) + "\n")
    info = {"model": manifest.model_id, "split": manifest.split_index, "bundle_id": manifest.bundle_id,
            "backend": head.name if manifest.part("head") else backend, "provider": head.provider,
            "cloud_backend": welcome.get("backend"), "cloud_provider": welcome.get("provider"),
            "dataset": data.name, "batch_size": batch_size, "random_init": manifest["model"]["weights"]["random_init"]}
    if report:
        return write_report(report, info, recorder)
    info.update(summary)
    return info
