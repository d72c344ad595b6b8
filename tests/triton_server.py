"""Starts `cli.py serve-triton` as a real subprocess (a real tritonserver) on free loopback ports, for the tests.

``unavailable()`` says why Triton cannot run here (None where it can): the tests skip with that reason.
"""
import os
import shutil
import signal

from conftest import REPO

from runtime import launch
from runtime.cloud import triton_server


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


class TritonProcess(launch.TritonStarted):
    """``cli.py serve-triton --repo REPO`` started and seen ready; ``grpc``, ``http``, ``metrics`` are host:port."""

    def __init__(self, repo, *extra, grpc_port=0, http_port=0, metrics_port=0):
        launch.TritonStarted.__init__(self, repo, "--grpc-port", grpc_port, "--http-port", http_port,
                                      "--metrics-port", metrics_port, *extra, cwd=REPO,
                                      env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def server_pid(self):
        """The tritonserver process serve-triton started."""
        with open("/proc/{0}/task/{0}/children".format(self.proc.pid)) as f:
            return int(f.read().split()[0])

    def kill_server(self):
        """SIGKILL the tritonserver itself (serve-triton then exits non-zero, as a supervisor would see)."""
        os.kill(self.server_pid(), signal.SIGKILL)
        self.proc.wait(60)
