#!/usr/bin/env python3
"""Seed-style baseline: split inference the way the original prototype did it.

Written from the description of the original prototype (no code copied), for the
benchmark harness to compare the product against:

* cloud: ``socketserver.ThreadingTCPServer``, one thread and one model copy per
  client (the traced model is built once at start-up; each client gets a
  ``copy.deepcopy`` of its tail, the analogue of the seed's per-client model);
* edge: a plain client; eager PyTorch under ``torch.no_grad()``,
  ``torch.set_num_threads(threads)`` on both sides, one sample at a time;
* wire: **pickle for everything**.  A message is ``pickle.dumps(len(payload))``,
  an acknowledgement read with ``recv(1024)``, then the pickled payload, read in
  4 KiB ``recv``s until complete.  The edge first sends the split index, then per
  sample the boundary tensor (a torch tensor, pickled); the cloud runs the tail and
  replies with the pickled tuple ``(logits tensor, cloud inference ms)``; the edge
  ends with ``'END'``, and the cloud answers with its totals, read with a single
  ``recv(1024)`` as the seed read them;
* figures as the seed's: edge = head inference, cloud = tail inference (timed on
  the cloud), transmission = round trip minus the cloud time the cloud reports.

The model is the project's own (``exporter.models.configs.resolve``,
``exporter.bundle.prepare_model``, ``exporter.cutpoints.TracedModel``), so split
``k`` means the same as in the product, and ``random_init=True`` gives exactly the
weights of ``cli.py export --random-init`` (prepare_model seeds torch with
``RANDOM_INIT_SEED`` before building).  As in the product, without ``weights`` a
``weights/resnet50-best.pth`` under the current directory is used when present.
Not reproduced: the seed's cloud sending the weights file to the edge on connect
(its README calls that optional).

Usage::

    python bench/seed_style.py serve --port 9999 [--threads 1] [--weights W]
    python bench/seed_style.py edge --cloud 127.0.0.1:9999 --split 20 --limit 100 [--threads 1] [--json OUT]

###########################################################################
# WARNING: pickle on network bytes is DELIBERATE here, to reproduce the   #
# seed.  ``pickle.loads`` of data from a peer lets that peer run any code #
# in this process.  This file is a baseline for trusted lab use only, on  #
# loopback or an isolated network.  NEVER use this code, or pickle on the #
# wire, in the product (runtime/ speaks the framed protocol of            #
# docs/PROTOCOL.md instead).                                              #
###########################################################################
"""
import argparse
import copy
import json
import os
import pickle  # DELIBERATE (seed reproduction, trusted lab use only): see the warning above
import socket
import socketserver
import statistics
import sys
import time

import numpy as np
import torch  # imported at the top, as the seed did (part of the edge's start-up cost)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

CHUNK = 4096
ACK = b"ACK"
END = "END"


# ---------------------------------------------------------------- wire (pickle, seed framing)

def send_msg(sock, obj):
    """Send ``obj`` the seed's way; return the number of payload bytes (the pickled object)."""
    payload = pickle.dumps(obj)
    sock.sendall(pickle.dumps(len(payload)))
    sock.recv(1024)  # the acknowledgement
    sock.sendall(payload)
    return len(payload)


def recv_msg(sock):
    """Receive one message the seed's way; None when the peer closed the connection."""
    header = sock.recv(1024)
    if not header:
        return None
    length = pickle.loads(header)  # DELIBERATE: unsafe on untrusted peers
    sock.sendall(ACK)
    data = b""
    while len(data) < length:
        packet = sock.recv(min(CHUNK, length - len(data)))
        if not packet:
            raise ConnectionError("peer closed the connection in the middle of a message")
        data += packet
    return pickle.loads(data)  # DELIBERATE: unsafe on untrusted peers


# ---------------------------------------------------------------- model (the project's own)

class SeedSplit(object):
    """The seed's chain expansion: ``get_layers`` walks ``named_children()`` and recurses into nn.Sequential only,
    with a flatten before ``fc``; split k is ``Sequential(*layers[:k])`` / ``Sequential(*layers[k:])``."""

    def __init__(self, model):
        self.model = model.eval()
        self.layers = []
        self._expand(self.model)

    def _expand(self, module):
        for name, child in module.named_children():
            if isinstance(child, torch.nn.Sequential):
                self._expand(child)
            else:
                if name == "fc":
                    self.layers.append(torch.nn.Flatten(1))
                self.layers.append(child)

    def head(self, k):
        return torch.nn.Sequential(*self.layers[:k]).eval() if k else None

    def tail(self, k):
        return torch.nn.Sequential(*self.layers[k:]).eval() if k < len(self.layers) else None


def build_traced(model="resnet50", weights=None, random_init=True):
    """The model as ``export_bundle`` builds it (same weights), cut as the seed cut it (SeedSplit);
    ``random_init`` is ignored when ``weights`` is given."""
    from exporter.bundle import prepare_model
    from exporter.models.configs import resolve
    config = resolve(model)
    net, _, _ = prepare_model(config, weights, bool(random_init) and not weights)
    return SeedSplit(net)


def _identity(x):
    return x


def _part(module):
    return _identity if module is None else module


# ---------------------------------------------------------------- cloud

def make_server(host, port, model="resnet50", weights=None, random_init=True, threads=1):
    """Build the model, then bind; return the (not yet serving) ThreadingTCPServer."""
    torch.set_num_threads(threads)
    traced = build_traced(model, weights, random_init)

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            conn = self.request
            split = recv_msg(conn)
            if split is None:
                return
            tail = _part(copy.deepcopy(traced.tail(int(split))))  # one model copy per client
            requests, cloud_total = 0, 0.0
            while True:
                x = recv_msg(conn)
                if x is None:
                    return
                if isinstance(x, str) and x == END:
                    break
                start = time.perf_counter()
                with torch.no_grad():
                    y = tail(x)
                cloud_ms = (time.perf_counter() - start) * 1000.0
                requests += 1
                cloud_total += cloud_ms
                send_msg(conn, (y, cloud_ms))
            conn.sendall(pickle.dumps({"requests": requests, "cloud_ms_total": cloud_total}))

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True

    return Server((host, port), Handler)


def serve(host, port, model="resnet50", weights=None, random_init=True, threads=1, on_ready=None):
    """Serve tails to any number of edges until interrupted (blocks).  ``on_ready(host, port)`` once bound."""
    server = make_server(host, port, model, weights, random_init, threads)
    try:
        if on_ready is not None:
            bound_host, bound_port = server.server_address[:2]
            on_ready(bound_host, bound_port)
        server.serve_forever()
    finally:
        server.server_close()


# ---------------------------------------------------------------- edge

def _address(address):
    if isinstance(address, str):
        host, _, port = address.rpartition(":")
        return host or "127.0.0.1", int(port)
    return address[0], int(address[1])


def run_edge(address, split, samples, model="resnet50", weights=None, random_init=True, threads=1, warmup=3,
             on_first_result=None, return_logits=False):
    """Run ``samples`` (float32, N x C x H x W, normalised) through the split model, one at a time.

    ``address`` is ``(host, port)`` or ``"host:port"``.  The first sample is first sent
    ``warmup`` times (excluded from every figure, as in the product's run-edge).
    ``on_first_result()`` is called once, right after the first reply (warm-up or not).
    Returns a dict: lists ``edge_ms``, ``transmission_ms``, ``cloud_ms``, ``predictions``
    (one per sample), ``bytes_per_sample`` (pickled tensor payload sent per sample), ``cpu_ms_per_sample``
    (this process's CPU time over the samples, warm-up excluded),
    ``warmup_requests``, ``setup_s`` (connect + model build) and ``cloud_totals``; with
    ``return_logits`` also ``logits`` (one float32 numpy array of 100 per sample).
    """
    started = time.perf_counter()
    torch.set_num_threads(threads)
    samples = np.asarray(samples, dtype=np.float32)
    sock = socket.create_connection(_address(address))
    try:
        send_msg(sock, int(split))  # the split point first, as the seed did
        traced = build_traced(model, weights, random_init)
        head = _part(traced.head(int(split)))
        setup_s = time.perf_counter() - started
        result = {"edge_ms": [], "transmission_ms": [], "cloud_ms": [], "predictions": [],
                  "bytes_per_sample": None, "warmup_requests": 0, "setup_s": setup_s}
        if return_logits:
            result["logits"] = []
        first = [on_first_result]

        def one(x):
            start = time.perf_counter()
            with torch.no_grad():
                boundary = head(x)
            sent_at = time.perf_counter()
            sent = send_msg(sock, boundary)
            logits, cloud_ms = recv_msg(sock)
            done = time.perf_counter()
            if first[0] is not None:
                first[0]()
                first[0] = None
            return ((sent_at - start) * 1000.0, (done - sent_at) * 1000.0 - cloud_ms, cloud_ms, logits, sent)

        if len(samples):
            x0 = torch.from_numpy(samples[:1].copy())
            for _ in range(warmup):
                one(x0)
                result["warmup_requests"] += 1
        cpu_started = time.process_time()
        for i in range(len(samples)):
            x = torch.from_numpy(samples[i:i + 1].copy())
            edge_ms, transmission_ms, cloud_ms, logits, sent = one(x)
            result["edge_ms"].append(edge_ms)
            result["transmission_ms"].append(transmission_ms)
            result["cloud_ms"].append(cloud_ms)
            result["predictions"].append(int(logits.reshape(1, -1).argmax(dim=1).item()))
            if return_logits:
                result["logits"].append(logits.reshape(-1).numpy())
            result["bytes_per_sample"] = sent
        result["cpu_ms_per_sample"] = 1000.0 * (time.process_time() - cpu_started) / max(len(samples), 1)
        send_msg(sock, END)
        result["cloud_totals"] = pickle.loads(sock.recv(1024))  # a single recv(1024), as the seed
        return result
    finally:
        sock.close()


def synthetic_samples(n, shape=(3, 32, 32)):
    """``n`` normalised samples: np.random.RandomState(0) standard normal, float32."""
    return np.random.RandomState(0).standard_normal((n,) + tuple(shape)).astype(np.float32)


# ---------------------------------------------------------------- command line

def _median(values):
    return statistics.median(values) if values else float("nan")


def main(argv=None):
    parser = argparse.ArgumentParser(description="seed-style split inference baseline (pickle; trusted lab use only)")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the seed-style cloud")
    p_serve.add_argument("--host", default="127.0.0.1")
    p_serve.add_argument("--port", type=int, default=9999)
    p_serve.add_argument("--threads", type=int, default=1)
    p_serve.add_argument("--model", default="resnet50")
    p_serve.add_argument("--weights", default=None)
    p_edge = sub.add_parser("edge", help="run the seed-style edge on synthetic samples")
    p_edge.add_argument("--cloud", required=True, help="HOST:PORT")
    p_edge.add_argument("--split", type=int, required=True)
    p_edge.add_argument("--limit", type=int, default=100)
    p_edge.add_argument("--threads", type=int, default=1)
    p_edge.add_argument("--warmup", type=int, default=3)
    p_edge.add_argument("--model", default="resnet50")
    p_edge.add_argument("--weights", default=None)
    p_edge.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args(argv)

    if args.command == "serve":
        def ready(host, port):
            print("seed-style cloud listening on {}:{}".format(host, port), flush=True)
        try:
            serve(args.host, args.port, args.model, args.weights, args.weights is None, args.threads, on_ready=ready)
        except KeyboardInterrupt:
            pass
        return 0

    def first_result():
        sys.stderr.write("first result\n")
        sys.stderr.flush()

    result = run_edge(args.cloud, args.split, synthetic_samples(args.limit), args.model, args.weights,
                      args.weights is None, args.threads, args.warmup, on_first_result=first_result)
    print("seed-style split {}: {} samples, median edge {:.3f} ms, transmission {:.3f} ms, cloud {:.3f} ms, "
          "{} bytes/sample".format(args.split, len(result["predictions"]), _median(result["edge_ms"]),
                                   _median(result["transmission_ms"]), _median(result["cloud_ms"]),
                                   result["bytes_per_sample"]), flush=True)
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(dict(result, split=args.split, threads=args.threads), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
