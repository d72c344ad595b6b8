"""This tool's own commands as subprocesses: ``cli_command`` builds the argv, ``Started`` starts a server and
waits for its ready line (``TritonStarted``: serve-triton's, with its three addresses).

Running ``cli.py export`` in a child process keeps the runtime free of exporter
imports (the demo's steps, serve-cloud's on-demand exports).  ``serve_cloud`` is
the one way the demo, the tests and the benchmarks start ``cli.py serve-cloud``: on
a free port, returning once it listens, with its log kept.

Python 3.6 syntax.
"""
import os
import re
import signal
import subprocess
import sys
import threading

from runtime.errors import UserError

CLI = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cli.py")
READY = "serve-cloud listening on "
TRITON_READY = "serve-triton listening on "
TRITON_URLS = re.compile(r"grpc://(\S+) http://(\S+) metrics http://(\S+)")


def cli_command(*args):
    """argv for ``python cli.py ARGS`` with this interpreter."""
    return [sys.executable, CLI] + [str(a) for a in args]


class Started(object):
    """A server process, started and seen ready: its first line of output contains ``ready``, then its address.

    ``popen`` starts it (``subprocess.Popen``, or a wrapper that runs it elsewhere, e.g. in a network
    namespace).  Its stderr (the log): ``log="keep"`` collects it in ``log``, ``"inherit"`` lets it through
    to this process's stderr, ``"discard"`` drops it.  ``stop`` sends SIGTERM, as a user's Ctrl-C or a
    service manager would, and returns the exit code.
    """

    LOG = {"keep": subprocess.PIPE, "inherit": None, "discard": subprocess.DEVNULL}

    def __init__(self, argv, ready=READY, popen=subprocess.Popen, log="keep", **popen_kw):
        self.proc = popen([str(a) for a in argv], stdout=subprocess.PIPE, stderr=self.LOG[log],
                          universal_newlines=True, **popen_kw)
        self.log = []
        self._reader = None
        if log == "keep":  # read from the start: a server that logs much before its ready line must not block
            self._reader = threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True)
            self._reader.start()
        self.line = self.proc.stdout.readline()
        if ready not in self.line:
            self.proc.kill()
            self.proc.wait()
            if self._reader is not None:
                self._reader.join(10)
            said = "".join(self.log).strip().splitlines()
            raise UserError("the server did not start ({}): {}".format(
                " ".join(os.path.basename(str(a)) for a in argv[:3]),
                (said[-1] if said else self.line.strip()) or "no output"))
        self.address = self.line.strip().rsplit(" ", 1)[1]
        self.host, _, port = self.address.rpartition(":")
        self.port = int(port)

    def stop(self, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if self._reader is not None:
            self._reader.join(10)
        return code

    def log_text(self):
        return "".join(self.log)


class TritonStarted(Started):
    """``cli.py serve-triton --repo REPO ARGS`` started and seen ready: ``grpc``, ``http`` and ``metrics`` are
    its host:port addresses, ``ports`` their numbers; keywords as for ``Started``."""

    def __init__(self, repo, *args, **kw):
        Started.__init__(self, cli_command("serve-triton", "--repo", repo, *args), ready=TRITON_READY, **kw)
        self.grpc, self.http, self.metrics = TRITON_URLS.search(self.line).groups()
        self.ports = {k: int(v.rsplit(":", 1)[1]) for k, v in zip(("grpc", "http", "metrics"),
                                                                 (self.grpc, self.http, self.metrics))}


def serve_cloud(*args, **kw):
    """``cli.py serve-cloud ARGS`` started (add ``--port 0`` for a free port); keywords as for ``Started``."""
    return Started(cli_command("serve-cloud", *args), **kw)
