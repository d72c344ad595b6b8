"""Another service on the cloud's port: every client command that connects says so in one line, within seconds.

The services are real and started here, each on a free loopback port: Python's own http.server (it waits for a
request line that no frame ends, so to a client it says nothing), an HTTP server that answers 400 and closes, as nginx
does to bytes that are not HTTP, a peer that sends junk and closes, and one that accepts and says nothing.  Each
command runs as a real `cli.py` subprocess, in an empty directory that it must leave empty.
"""
import http.server
import os
import socket
import threading
import time

import pytest
from cloud_server import ServerProcess
from conftest import run_cli, tiny_bundle

from runtime.edge.client import GREETING_TIMEOUT_S

LONG_TIMEOUT_S = 60  # every command's --timeout here: a failure that waited on it could not meet the bound below
# from the service's accept to the command's exit: the greeting's 3 s at most (GREETING_TIMEOUT_S), then printing one
# line and exiting, well under a second unloaded; the rest is room for this 2-core machine under heavy load
FAILS_WITHIN_S = GREETING_TIMEOUT_S + 20
HTTP_400 = b"HTTP/1.1 400 Bad Request\r\nServer: nginx\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
JUNK = b"\x00\x01 not a frame \xff\r\n"


class Service(object):
    """A service on a free loopback port; ``accepted_at`` (time.monotonic()) once it accepted a connection."""

    def __init__(self):
        self.accepted = threading.Event()
        self.accepted_at = None

    def note_accept(self):
        if not self.accepted.is_set():
            self.accepted_at = time.monotonic()
            self.accepted.set()


class RawPeer(Service):
    """Accepts connections and hands each to ``behave(connection)``; those it keeps open are closed at ``close``."""

    def __init__(self, behave):
        Service.__init__(self)
        self.behave = behave
        self.held = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.address = "127.0.0.1:{}".format(self.listener.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed: the test is over
                return
            self.note_accept()
            self.held.append(conn)
            self.behave(conn)

    def close(self):
        self.listener.close()
        for conn in self.held:
            conn.close()


def answer_400(conn):
    conn.recv(65536)  # what the client sent: read, so the close below is a plain FIN
    conn.sendall(HTTP_400)
    conn.close()


def junk_and_close(conn):
    conn.sendall(JUNK)
    conn.close()  # the client's bytes unread: the close resets the connection


class PythonHttpServer(Service):
    """Python's own http.server (what `python -m http.server` runs), on a thread."""

    def __init__(self):
        Service.__init__(self)
        service = self

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self):
                got = http.server.ThreadingHTTPServer.get_request(self)
                service.note_accept()
                return got

            def handle_error(self, request, client_address):
                pass  # its 400 meets a client that has gone: nothing to report

        class Quiet(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

        self.server = Server(("127.0.0.1", 0), Quiet)
        self.address = "127.0.0.1:{}".format(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


SERVICES = {
    "http.server": PythonHttpServer,
    "http-400": lambda: RawPeer(answer_400),
    "junk": lambda: RawPeer(junk_and_close),
    "silent": lambda: RawPeer(lambda conn: None),
}
SAYS = {
    "http.server": "it sent no greeting within {:g} s of connecting".format(GREETING_TIMEOUT_S),
    "http-400": 'it answered "HTTP/1.1 400 Bad Request"',
    "junk": r'it answered "\x00\x01 not a frame \xff"',
    "silent": "it sent no greeting within {:g} s of connecting".format(GREETING_TIMEOUT_S),
}
WHAT_TO_DO = "give --cloud the HOST:PORT that serve-cloud listens on"


@pytest.fixture(scope="module")
def bundle(tiny_bundles):
    return tiny_bundle(tiny_bundles, 1)  # push verifies its bundle before it connects


def command(name, cloud, bundle):
    """argv of a client command that connects to ``cloud`` first thing, with files (if any) in the working directory
    (the test's empty one), --timeout LONG_TIMEOUT_S, and --power none where it measures energy (stderr is then the
    error alone)."""
    return {
        "run-edge": ["run-edge", "--split", "1", "--dataset", "synthetic", "--limit", 2, "--cache", "cache",
                     "--report", "r.json", "--power", "none"],
        "plan": ["plan", "--cache", "cache", "--json", "--power", "none"],
        "sweep": ["sweep", "--splits", "1", "--dataset", "synthetic", "--limit", 2, "--cache", "cache", "--csv",
                  "s.csv", "--power", "none"],
        "profile": ["profile", "--cache", "cache", "--out", "p.json", "--power", "none"],
        "status": ["status"],
        "push": ["push", bundle, "--admin-token", "t0ken"],
    }[name] + ["--cloud", cloud, "--timeout", LONG_TIMEOUT_S]


COMMANDS = ("run-edge", "plan", "sweep", "profile", "status", "push")


def the_error(proc, tmp_path):
    """The command's one line of error (its whole stderr), after checking the exit and that nothing was left."""
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert os.listdir(str(tmp_path)) == [], "left behind"
    return lines[0]


@pytest.mark.parametrize("name", COMMANDS)
@pytest.mark.parametrize("kind", sorted(SERVICES))
def test_every_command_tells_another_service_on_the_port_in_one_line_within_seconds(kind, name, tmp_path, bundle):
    service = SERVICES[kind]()
    try:
        proc = run_cli(*command(name, service.address, bundle), cwd=tmp_path, timeout=300)
        ended = time.monotonic()
    finally:
        service.close()
    line = the_error(proc, tmp_path)
    assert "the service at {} is not an edgesplit serve-cloud: ".format(service.address) in line, line
    assert SAYS[kind] in line and line.endswith(WHAT_TO_DO), line
    assert service.accepted.is_set(), "it never connected"
    assert ended - service.accepted_at < FAILS_WITHIN_S, "it took {:.1f} s".format(ended - service.accepted_at)


@pytest.mark.parametrize("name", COMMANDS)
def test_a_port_left_out_of_cloud_is_named_in_the_error(name, tmp_path, bundle):
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 9999)) == 0:
            pytest.skip("something listens on 127.0.0.1:9999, serve-cloud's default port, on this machine")
    line = the_error(run_cli(*command(name, "127.0.0.1", bundle), cwd=tmp_path, timeout=300), tmp_path)
    assert "cannot connect to the cloud at 127.0.0.1 (Connection refused)" in line, line
    assert "--cloud 127.0.0.1 names no port, so serve-cloud's default 9999 was tried" in line, line
    assert line.endswith("give the port serve-cloud listens on, as --cloud HOST:PORT"), line


def test_a_tls_handshake_with_a_silent_service_is_bounded_by_the_greeting_too(tmp_path):
    service = RawPeer(lambda conn: None)
    try:
        proc = run_cli("status", "--cloud", service.address, "--tls", "--timeout", LONG_TIMEOUT_S, cwd=tmp_path,
                       timeout=300)
        ended = time.monotonic()
    finally:
        service.close()
    line = the_error(proc, tmp_path)
    assert "is not an edgesplit serve-cloud with --tls-cert: it did not answer the TLS handshake within {:g} s".format(
        GREETING_TIMEOUT_S) in line and line.endswith(WHAT_TO_DO), line
    assert ended - service.accepted_at < FAILS_WITHIN_S, "it took {:.1f} s".format(ended - service.accepted_at)


def test_status_without_the_token_a_cloud_needs_names_its_own_option(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    srv = ServerProcess(store, "--token", "s3cret")
    try:
        proc = run_cli("status", "--cloud", srv.address, cwd=tmp_path, timeout=300)
    finally:
        assert srv.stop() == 0
    assert proc.returncode == 1 and proc.stdout == "", proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: this cloud needs its inference token: pass it with --token TOKEN or $EDGESPLIT_TOKEN"]
    assert "code=auth_required" not in srv.log_text()  # said by the client, from the greeting: nothing was refused
