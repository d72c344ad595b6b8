"""Starts `cli.py serve-triton` as a real subprocess (a real tritonserver) on free loopback ports, for the tests.

``unavailable()`` says why Triton cannot run here (None where it can): the tests skip with that reason.
"""
import os
import re
import shutil
import signal
import subprocess
import threading

from conftest import REPO

from runtime import launch
from runtime.cloud import triton_server

LINE = re.compile(r"serve-triton listening on grpc://(\S+) http://(\S+) metrics http://(\S+)")


def unavailable():
    """The reason real Triton servers cannot be started here, or None."""
    if shutil.which("tritonserver"):
        return None
    env = triton_server.python_env_dir()
    said = os.path.join(env, "UNAVAILABLE")
    if os.path.exists(said):
        with open(said) as f:
            return "nvidia-pytriton could not be installed ({})".format(f.read().strip())
    try:
        info = triton_server.describe_env(env)
    except Exception as exc:
        return "no python environment for Triton's python backend ({}); run make triton-env".format(exc)
    if not info.get("pytriton"):
        return "nvidia-pytriton is not installed in {} (make triton-env installs it)".format(env)
    return None


class TritonProcess(object):
    """``cli.py serve-triton --repo REPO`` started and seen ready; ``grpc``, ``http``, ``metrics`` are host:port."""

    def __init__(self, repo, *extra, grpc_port=0, http_port=0, metrics_port=0):
        argv = launch.cli_command("serve-triton", "--repo", repo, "--grpc-port", grpc_port, "--http-port", http_port,
                                  "--metrics-port", metrics_port, *extra)
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.log = []
        self._reader = threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True)
        self._reader.start()
        self.line = self.proc.stdout.readline()
        match = LINE.search(self.line)
        if not match:
            self.proc.kill()
            self.proc.wait()
            self._reader.join(5)
            raise AssertionError("serve-triton did not start: {!r}\n{}".format(self.line, "".join(self.log[-20:])))
        self.grpc, self.http, self.metrics = match.groups()
        self.ports = {k: int(v.rsplit(":", 1)[1]) for k, v in zip(("grpc", "http", "metrics"), match.groups())}

    def server_pid(self):
        """The tritonserver process serve-triton started."""
        with open("/proc/{0}/task/{0}/children".format(self.proc.pid)) as f:
            return int(f.read().split()[0])

    def kill_server(self):
        """SIGKILL the tritonserver itself (serve-triton then exits non-zero, as a supervisor would see)."""
        os.kill(self.server_pid(), signal.SIGKILL)
        self.proc.wait(60)

    def stop(self, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(10)
        return self.proc.returncode

    def log_text(self):
        return "".join(self.log)
