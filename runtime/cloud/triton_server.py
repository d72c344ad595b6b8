"""``serve-triton``: an NVIDIA Triton Inference Server on a model repository, for development and tests.

Which server:

1. NVIDIA's ``tritonserver`` when one is on PATH (NVIDIA's container, a local
   build): started as it is, with its own backends.
2. Otherwise the one bundled in the ``nvidia-pytriton`` wheel, found in the
   *python environment* the python backend's models run in (``--python-env``;
   default ``$EDGESPLIT_TRITON_ENV``, else ``.venv-triton`` beside ``cli.py``
   (``make triton-env`` makes it), else this interpreter's).  That wheel holds the
   real server with the python backend only, and needs three fixes, applied here:
   the environment's ``bin`` first on PATH (the backend stub takes its packages
   from the first ``python3``), ``LD_LIBRARY_PATH`` starting with the ``lib`` of
   the Python that environment was made from (else the stub loads another
   libpython) and the wheel's ``nvidia_pytriton.libs``, and a backend directory of
   our own holding the python backend with the stub for that Python's version.
   The stub is built against numpy 1: an environment with numpy 2 returns outputs
   of the right shape and no data, so it is refused.

The server binds ``--host`` (127.0.0.1 unless told), on the ports given (0: a free
one, picked here), loads every model of the repository (``--model-control
explicit`` loads them all at start and then takes the repository API's load and
unload requests; ``none`` loads them once), and once ``/v2/health/ready`` answers
(every model ready) prints the ready line on stdout::

    serve-triton listening on grpc://H:P http://H:P metrics http://H:P

Triton's log goes to stderr.  On SIGINT or SIGTERM the server is asked to stop (it
finishes the requests in flight, bounded by ``--exit-timeout-secs``), and then
every process it started (the python backend's stubs) is waited for, or killed:
nothing is left running.  This process is made a child subreaper, so stubs that
outlive the server are its children and are reaped here.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from runtime.errors import UserError
from runtime.options import Options

READY = "serve-triton listening on "
ENV_VARIABLE = "EDGESPLIT_TRITON_ENV"
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_ENV = os.path.join(PROJECT_ROOT, ".venv-triton")
EXIT_TIMEOUT_S = 5    # Triton's --exit-timeout-secs: how long it lets requests in flight finish
REAP_TIMEOUT_S = 10   # then how long its stubs get to exit before they are killed
PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1

# what the python environment says about itself (one subprocess, JSON on stdout)
_ASK_ENV = r"""
import importlib.util, json, os, sys, sysconfig
def where(name):
    spec = importlib.util.find_spec(name)
    return os.path.dirname(spec.origin) if spec and spec.origin else None
numpy = None
try:
    import numpy
    numpy = numpy.__version__
except ImportError:
    pass
print(json.dumps({"python": "%d.%d" % sys.version_info[:2], "libdir": sysconfig.get_config_var("LIBDIR"),
                  "numpy": numpy, "pytriton": where("pytriton"), "bin": os.path.dirname(sys.executable)}))
"""


class ServeTritonOptions(Options):
    repo = None             # the model repository
    host = "127.0.0.1"
    http_port = 8000        # 0: a free port
    grpc_port = 8001
    metrics_port = 8002
    model_control = "explicit"  # explicit (repository API, every model loaded at start) or none
    python_env = None       # the environment of the python backend's models (None: see the module's docstring)
    tritonserver = None     # a tritonserver binary to use (None: PATH, then nvidia-pytriton's)
    start_timeout = 120.0   # seconds for every model to be ready


class Server(object):
    """How to start one tritonserver: its binary, extra arguments and environment, and what to delete after."""

    def __init__(self, binary, args=(), env=None, scratch=None, kind="nvidia"):
        self.binary, self.args, self.env, self.scratch, self.kind = binary, list(args), env, scratch, kind

    def cleanup(self):
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)


def python_env_dir(given=None):
    """The python environment for the python backend (a directory with bin/python3)."""
    if given:
        return given
    if os.environ.get(ENV_VARIABLE):
        return os.environ[ENV_VARIABLE]
    if os.path.isdir(DEFAULT_ENV):
        return DEFAULT_ENV
    return sys.prefix


def describe_env(env_dir):
    """What the python environment ``env_dir`` holds: its Python version, LIBDIR, numpy, pytriton."""
    python = os.path.join(env_dir, "bin", "python3")
    if not os.path.exists(python):
        raise UserError("--python-env {}: no bin/python3 there; give a virtual environment (make triton-env makes "
                        "one: .venv-triton)".format(env_dir))
    try:
        said = subprocess.run([python, "-c", _ASK_ENV], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=60)
        return json.loads(said.stdout)
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        raise UserError("cannot ask {} about its packages ({})".format(python, exc))


def find_server(options):
    """The Server to start: ``--tritonserver``, NVIDIA's on PATH, else nvidia-pytriton's (with its fixes)."""
    binary = options.tritonserver or shutil.which("tritonserver")
    if binary:
        return Server(binary)
    env_dir = python_env_dir(options.python_env)
    info = describe_env(env_dir)
    if not info.get("pytriton"):
        raise UserError("no tritonserver on PATH and no nvidia-pytriton in {} ({}); run make triton-env, or install "
                        "it there: pip install 'numpy<2' onnxruntime nvidia-pytriton==0.7.0".format(
                            env_dir, info["bin"]))
    if not info.get("numpy") or int(info["numpy"].split(".")[0]) >= 2:
        raise UserError("the python environment {} has numpy {}; the python backend's stub needs numpy<2 (outputs "
                        "come back empty with numpy 2): pip install 'numpy<2' there".format(
                            env_dir, info.get("numpy") or "missing"))
    return _pytriton_server(info)


def _pytriton_server(info):
    """nvidia-pytriton's tritonserver with FACTS' three fixes: PATH, LD_LIBRARY_PATH and a backend directory."""
    root = os.path.join(info["pytriton"], "tritonserver")
    stub = os.path.join(root, "python_backend_stubs", info["python"], "triton_python_backend_stub")
    if not os.path.exists(stub):
        raise UserError("nvidia-pytriton has no python backend stub for Python {} ({}); make the environment with "
                        "a Python it supports".format(info["python"], os.path.dirname(stub)))
    binary = os.path.join(root, "bin", "tritonserver")
    if not os.access(binary, os.X_OK):
        os.chmod(binary, 0o755)  # the wheel does not keep the executable bit
    scratch = tempfile.mkdtemp(prefix="serve-triton-")
    backends = os.path.join(scratch, "backends")
    shutil.copytree(os.path.join(root, "backends"), backends)
    shutil.copy2(stub, os.path.join(backends, "python", "triton_python_backend_stub"))
    env = dict(os.environ)
    libs = os.path.join(os.path.dirname(info["pytriton"]), "nvidia_pytriton.libs")
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (info["libdir"], libs, env.get("LD_LIBRARY_PATH")) if p)
    env["PATH"] = os.pathsep.join((info["bin"], env.get("PATH", "")))
    return Server(binary, ["--backend-directory={}".format(backends)], env, scratch, kind="nvidia-pytriton")


def free_port(host):
    """A port nobody listens on now (port 0 asked of the kernel, then released for Triton to take)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def server_args(options, ports):
    """tritonserver's command-line options for ``ports`` = {"http": P, "grpc": P, "metrics": P}."""
    o = options
    args = ["--model-repository={}".format(os.path.abspath(o.repo)),
            "--http-address={}".format(o.host), "--http-port={}".format(ports["http"]),
            "--grpc-address={}".format(o.host), "--grpc-port={}".format(ports["grpc"]),
            "--metrics-address={}".format(o.host), "--metrics-port={}".format(ports["metrics"]),
            "--exit-timeout-secs={}".format(EXIT_TIMEOUT_S), "--strict-readiness=true"]
    if o.model_control == "explicit":
        args += ["--model-control-mode=explicit", "--load-model=*"]
    return args


def check_options(options):
    o = options
    if o.model_control not in ("explicit", "none"):
        raise UserError("--model-control must be explicit or none, not {!r}".format(o.model_control))
    if not o.repo or not os.path.isdir(o.repo):
        raise UserError("--repo {}: no such model repository; write one with export-triton".format(o.repo))
    entries = [d for d in os.listdir(o.repo) if os.path.isfile(os.path.join(o.repo, d, "config.pbtxt"))]
    if not entries:
        raise UserError("--repo {} holds no model (no */config.pbtxt); write one with export-triton".format(o.repo))
    for name in ("http_port", "grpc_port", "metrics_port"):
        if not 0 <= getattr(o, name) <= 65535:
            raise UserError("--{} must be a port number (0: a free one)".format(name.replace("_", "-")))


def wait_ready(proc, url, timeout, stopping=()):
    """Poll Triton's readiness until it answers 200 (True), or a stop was asked (False); UserError if it exits
    or takes longer than ``timeout``."""
    from urllib.error import URLError
    from urllib.request import urlopen
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stopping:
            return False
        if proc.poll() is not None:
            raise UserError("tritonserver exited with status {} before its models were ready (its log is above)"
                            .format(proc.returncode))
        try:
            with urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return True
        except (URLError, OSError):
            pass
        time.sleep(0.1)
    raise UserError("the models of the repository were not ready after {:.0f} s (--start-timeout)".format(timeout))


def _prctl(option, value):
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux


def _stop_with_parent():
    """In the server's process, before exec: SIGTERM it if serve-triton dies (even by SIGKILL)."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def become_subreaper():
    """Orphaned descendants (stubs outliving the server) become this process's children, to be reaped here."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1)  # elsewhere than Linux the process group is still waited for and killed


def stop(proc, pgid):
    """SIGTERM the server, wait for it, then for every process of its group (killed after REAP_TIMEOUT_S)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(EXIT_TIMEOUT_S + REAP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + REAP_TIMEOUT_S
    while _group_alive(pgid):
        if time.monotonic() > deadline:
            _signal_group(pgid, signal.SIGKILL)
            deadline = time.monotonic() + REAP_TIMEOUT_S
        time.sleep(0.05)
    return proc.returncode


def _group_alive(pgid):
    """Reap any exited child, then: is a process of group ``pgid`` still running?"""
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass
    return _signal_group(pgid, 0)


def _signal_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def serve_triton(options, out=None):
    """The serve-triton command: start Triton, print the ready line, run until SIGINT/SIGTERM; return 0."""
    o = options
    out = out or sys.stdout
    check_options(o)
    server = find_server(o)
    ports = {name: getattr(o, name + "_port") or free_port(o.host) for name in ("grpc", "http", "metrics")}
    stopping = []
    previous = {s: signal.signal(s, lambda signum, frame: stopping.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    become_subreaper()
    try:
        proc = subprocess.Popen([server.binary] + server.args + server_args(o, ports), env=server.env,
                                stdout=sys.stderr, stderr=sys.stderr, start_new_session=True,
                                preexec_fn=_stop_with_parent)
    except OSError as exc:
        server.cleanup()
        raise UserError("cannot start {} ({})".format(server.binary, exc.strerror or exc))
    try:
        return _run(proc, o, ports, stopping, out)
    finally:
        stop(proc, proc.pid)
        server.cleanup()
        for s, handler in previous.items():
            signal.signal(s, handler)


def _run(proc, o, ports, stopping, out):
    host = o.host if o.host not in ("0.0.0.0", "") else "127.0.0.1"
    urls = {name: "{}://{}:{}".format("grpc" if name == "grpc" else "http", host, port)
            for name, port in ports.items()}
    if not wait_ready(proc, urls["http"] + "/v2/health/ready", o.start_timeout, stopping):
        return 0
    out.write("{}{} {} metrics {}\n".format(READY, urls["grpc"], urls["http"], urls["metrics"]))
    out.flush()
    while not stopping:
        if proc.poll() is not None:
            raise UserError("tritonserver exited with status {} (its log is above)".format(proc.returncode))
        time.sleep(0.1)
    return 0
