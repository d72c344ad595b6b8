"""nginx as the tests' real load balancer: deploy/nginx.conf with its upstreams and listeners moved to loopback
ports, run unprivileged in the foreground (tests/test_deploy_files.py, tests/test_triton_fleet.py)."""
import os
import re
import shutil
import socket
import subprocess
import time

from conftest import REPO

DEPLOY_CONF = os.path.join(REPO, "deploy", "nginx.conf")


def nginx_version():
    exe = shutil.which("nginx")
    if not exe:
        return None
    out = subprocess.run([exe, "-v"], capture_output=True, text=True).stderr
    m = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(g) for g in m.groups()) if m else None


def nginx_conf_for(text, pools, listens, tmp, http2_directive=True):
    """nginx.conf with each upstream's `server` lines replaced by POOLS[name], listen ports moved, and temporary
    files in TMP (so it runs unprivileged)."""
    def pool(m):
        name, body = m.group(1), m.group(2)
        body = re.sub(r"^\s*server\s+\S+;\n", "", body, flags=re.M)
        lines = "".join("        server {};\n".format(addr) for addr in pools[name])
        return "upstream {} {{\n{}{}}}".format(name, lines, body.lstrip("\n"))
    text = re.sub(r"upstream\s+(\w+)\s*\{(.*?)\}", pool, text, flags=re.S)
    for old, new in listens.items():
        text = re.sub(r"listen\s+{};".format(old), "listen 127.0.0.1:{}{};".format(
            new, "" if http2_directive or old != 8001 else " http2"), text)
    if not http2_directive:  # nginx before 1.25.1: http2 is a listen parameter
        text = text.replace("http2 on;", "")
    text = re.sub(r"worker_processes\s+\w+;", "worker_processes 1;", text)
    temps = "".join("    {}_temp_path {}/{};\n".format(kind, tmp, kind)
                    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return text.replace("http {\n", "http {\n" + temps, 1)


def free_ports(n):
    """N distinct ports that nothing listens on (all held at once while they are chosen)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_listening(port, proc, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "nginx exited: rc {}".format(proc.returncode)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("nginx does not listen on {}".format(port))



def unavailable():
    """Why nginx cannot balance here (None: it can)."""
    version = nginx_version()
    if version is None or version < (1, 19, 5):
        return "no nginx 1.19.5 or later installed (make test installs Debian's nginx-light where it runs as root)"
    return None


class Balancer(object):
    """deploy/nginx.conf run in front of ``grpc`` and ``http`` upstreams (lists of host:port); ``grpc_port`` and
    ``http_port`` are where it listens."""

    def __init__(self, tmp, grpc, http):
        self.grpc_port, self.http_port = free_ports(2)
        with open(DEPLOY_CONF) as f:
            conf = nginx_conf_for(f.read(), {"triton_grpc": grpc, "triton_http": http},
                                  {8001: self.grpc_port, 8000: self.http_port}, tmp,
                                  http2_directive=nginx_version() >= (1, 25, 1))
        path = os.path.join(str(tmp), "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        self.log_path = os.path.join(str(tmp), "nginx.log")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([shutil.which("nginx"), "-p", str(tmp), "-c", path, "-e", "stderr", "-g",
                                      "daemon off; pid {}/nginx.pid;".format(tmp)],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        for port in (self.grpc_port, self.http_port):
            wait_listening(port, self.proc)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self._log.close()

    def log_lines(self):
        with open(self.log_path) as f:
            return f.read().splitlines()
