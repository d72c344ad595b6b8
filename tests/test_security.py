"""TLS, mutual TLS and the inference token, with real serve-cloud and run-edge processes over loopback,
serving the tests' tiny model (tests/fixtures/tiny_models.py) at split 4.

Certificates are made here with trustme (a throwaway CA); nothing is read from the system's store.
"""
import json
import socket

import numpy as np
import pytest
from cloud_server import ServerProcess
from conftest import TINY_ID, run_cli

from runtime.wire import auth, codec, sockets

trustme = pytest.importorskip("trustme")
TOKEN = "correct-horse-battery-staple"


@pytest.fixture(scope="module")
def artifacts(tiny_bundles):
    return tiny_bundles


@pytest.fixture(scope="module")
def labelled_npz(tiny_labelled_npz):
    return tiny_labelled_npz


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA with a server certificate for 127.0.0.1 and a client certificate, and a second, untrusted CA."""
    root = tmp_path_factory.mktemp("pki")
    files = {}
    ca, other = trustme.CA(), trustme.CA()
    for name, authority in (("ca", ca), ("other_ca", other)):
        files[name] = str(root / (name + ".pem"))
        authority.cert_pem.write_to_path(files[name])
    for name, authority, identities in (("server", ca, ("127.0.0.1", "localhost")), ("client", ca, ("edge-1",)),
                                        ("rogue", other, ("edge-2",))):
        cert = authority.issue_cert(*identities)
        files[name + "_cert"] = str(root / (name + ".pem"))
        files[name + "_key"] = str(root / (name + ".key"))
        cert.cert_chain_pems[0].write_to_path(files[name + "_cert"])
        cert.private_key_pem.write_to_path(files[name + "_key"])
    return files


def edge(server, artifacts, labelled_npz, tmp_path, *args, limit=20):
    report = tmp_path / "r.json"
    proc = run_cli("run-edge", "--cloud", server.address, "--artifacts", artifacts, "--model", TINY_ID, "--split", "4",
                   "--dataset", "npz:" + labelled_npz[0], "--limit", limit, "--report", report,
                   "--reconnect-timeout", "0", *args, timeout=300)
    return proc, (json.loads(report.read_text()) if proc.returncode == 0 else None)


def one_line_error(proc):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and lines and lines[-1].startswith("error: "), proc.stderr
    return lines[-1]


def test_tls_serves_a_verifying_edge_and_refuses_plain_and_untrusted_ones(artifacts, labelled_npz, tmp_path, pki):
    srv = ServerProcess(artifacts, "--tls-cert", pki["server_cert"], "--tls-key", pki["server_key"])
    try:
        proc, report = edge(srv, artifacts, labelled_npz, tmp_path, "--tls-ca", pki["ca"])
        assert proc.returncode == 0, proc.stderr
        assert report["predictions"] == labelled_npz[1][:20].tolist()
        assert report["busy_poll"] is False  # no non-blocking peek through TLS
        plain, _ = edge(srv, artifacts, labelled_npz, tmp_path)
        assert "--tls-ca" in one_line_error(plain)
        untrusted, _ = edge(srv, artifacts, labelled_npz, tmp_path, "--tls-ca", pki["other_ca"])
        assert "TLS handshake with the cloud" in one_line_error(untrusted)
        assert "unable to get local issuer certificate" in untrusted.stderr
    finally:
        assert srv.stop() == 0
    log = srv.log_text()
    assert log.count("event=tls_failed peer=127.0.0.1:") == 2  # the plain edge and the one that hung up
    assert "event=connect peer=127.0.0.1:" in log and "tls=yes" in log


def test_mutual_tls_refuses_a_client_without_a_certificate_from_the_trusted_ca(artifacts, labelled_npz, tmp_path,
                                                                                 pki):
    srv = ServerProcess(artifacts, "--tls-cert", pki["server_cert"], "--tls-key", pki["server_key"],
                        "--tls-client-ca", pki["ca"])
    try:
        good, report = edge(srv, artifacts, labelled_npz, tmp_path, "--tls-ca", pki["ca"],
                            "--tls-cert", pki["client_cert"], "--tls-key", pki["client_key"])
        assert good.returncode == 0, good.stderr
        assert report["predictions"] == labelled_npz[1][:20].tolist()
        rogue, _ = edge(srv, artifacts, labelled_npz, tmp_path, "--tls-ca", pki["ca"],
                        "--tls-cert", pki["rogue_cert"], "--tls-key", pki["rogue_key"])
        assert "TLS" in one_line_error(rogue)
        anonymous, _ = edge(srv, artifacts, labelled_npz, tmp_path, "--tls-ca", pki["ca"])
        assert "--tls-cert/--tls-key" in one_line_error(anonymous)
    finally:
        assert srv.stop() == 0
    failed = [l for l in srv.log if "event=tls_failed" in l]
    assert len(failed) == 2 and all("peer=127.0.0.1:" in l for l in failed)


def test_missing_tls_files_are_one_line_errors(tmp_path, pki):
    proc = run_cli("serve-cloud", "--port", "0", "--artifacts", tmp_path, "--tls-cert", tmp_path / "none.pem",
                   "--tls-key", pki["server_key"], timeout=60)
    assert "does not exist" in one_line_error(proc) and "--tls-cert" in proc.stderr
    proc = run_cli("serve-cloud", "--port", "0", "--artifacts", tmp_path, "--tls-cert", pki["server_cert"],
                   "--tls-key", pki["client_key"], timeout=60)  # not the certificate's key
    assert "PEM pair" in one_line_error(proc)
    proc = run_cli("run-edge", "--cloud", "127.0.0.1:9", "--tls-cert", pki["client_cert"], "--cache", tmp_path,
                   timeout=60)
    assert "--tls-cert and --tls-key" in one_line_error(proc)


def _raw(server):
    sock = socket.create_connection((server.host, server.port), timeout=10)
    return sock, sockets.FrameReader(sock, allowed_types=codec.FROM_CLOUD)


def _challenge(sock, reader):
    sockets.send_frame(sock, codec.AUTH, 1, {})
    frame = reader.read()
    assert frame.type == codec.CHALLENGE and frame.meta["required"] is True
    return frame.meta["nonce"]


def test_the_token_is_proven_never_sent_and_every_other_frame_waits_for_it(artifacts, labelled_npz, tmp_path):
    srv = ServerProcess(artifacts, "--token", TOKEN)
    try:
        good, report = edge(srv, artifacts, labelled_npz, tmp_path, "--token", TOKEN)
        assert good.returncode == 0, good.stderr
        assert report["predictions"] == labelled_npz[1][:20].tolist()
        from_env = run_cli("run-edge", "--cloud", srv.address, "--artifacts", artifacts, "--model", TINY_ID,
                           "--split", "4",
                           "--dataset", "synthetic", "--limit", 3, env={"EDGESPLIT_TOKEN": TOKEN}, timeout=300)
        assert from_env.returncode == 0, from_env.stderr
        status = run_cli("status", "--cloud", srv.address, "--token", TOKEN, timeout=60)
        assert status.returncode == 0, status.stderr
        counters = json.loads(status.stdout)
        assert counters["requests"] >= 23 + 6 and counters["token"] is True and counters["errors"] == {}
        wrong, _ = edge(srv, artifacts, labelled_npz, tmp_path, "--token", "guess")
        assert "refused the inference token" in one_line_error(wrong)
        missing, _ = edge(srv, artifacts, labelled_npz, tmp_path)
        assert "--token" in one_line_error(missing) and "needs its inference token" in missing.stderr

        # before AUTH, every request is refused with one error and the connection closed
        x = np.zeros(8, np.uint8)
        for type_, meta, array in ((codec.HELLO, {"model": "resnet50", "split": 20}, None), (codec.ECHO, {}, x),
                                   (codec.PROFILE, {"model": "resnet50", "batch_size": 1}, None),
                                   (codec.FETCH, {"bundle_id": "x", "part": "head", "formats": ["onnx"]}, None),
                                   (codec.STATUS, {}, None)):
            sock, reader = _raw(srv)
            sockets.send_frame(sock, type_, 1, meta, array)
            frame = reader.read()
            assert frame.type == codec.ERROR and frame.meta["code"] == "auth_required", frame.meta
            with pytest.raises(codec.PeerClosed):
                reader.read()
            sock.close()

        # a proof answers one challenge only: replayed on another connection it is refused
        sock, reader = _raw(srv)
        proof = auth.proof(TOKEN, _challenge(sock, reader), auth.INFERENCE)
        assert TOKEN not in proof
        sockets.send_frame(sock, codec.AUTH, 2, {"proof": proof})
        assert reader.read().type == codec.DONE
        sockets.send_frame(sock, codec.STATUS, 3, {})
        status = reader.read().meta["status"]
        assert status["token"] is True and status["errors"]["bad_token"] == 1
        sock.close()
        sock, reader = _raw(srv)
        _challenge(sock, reader)
        sockets.send_frame(sock, codec.AUTH, 2, {"proof": proof})
        frame = reader.read()
        assert frame.type == codec.ERROR and frame.meta["code"] == "bad_token"
        with pytest.raises(codec.PeerClosed):
            reader.read()
        sock.close()
    finally:
        assert srv.stop() == 0
    log = srv.log_text()
    assert TOKEN not in log
    refused = [l for l in srv.log if "event=auth" in l and "result=refused" in l]
    assert len(refused) == 2 and all("peer=127.0.0.1:" in l for l in refused)


def test_a_cloud_reachable_off_loopback_without_tls_or_token_warns(tmp_path):
    srv = ServerProcess(tmp_path, "--host", "0.0.0.0")
    assert srv.stop() == 0, srv.log_text()
    warnings = [l for l in srv.log if "WARNING" in l and "without TLS or a token" in l]
    assert len(warnings) == 1
    quiet = ServerProcess(tmp_path, "--host", "0.0.0.0", "--token", TOKEN)
    assert quiet.stop() == 0, quiet.log_text()
    assert not any("without TLS or a token" in l for l in quiet.log)
