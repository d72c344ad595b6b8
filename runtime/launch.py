"""This tool's own commands as subprocesses: ``cli_command`` builds the argv, ``Started`` starts a server and
waits for its ready line.

Running ``cli.py export`` in a child process keeps the runtime free of exporter
imports (the demo's steps, serve-cloud's on-demand exports).  ``serve_cloud`` is
the one way the demo, the tests and the benchmarks start ``cli.py serve-cloud``: on
a free port, returning once it listens, with its log kept.

Python 3.6 syntax.
"""
import os
import signal
import subprocess
import sys
import threading

from runtime.errors import UserError

CLI = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cli.py")
READY = "serve-cloud listening on "


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
        keep_log = log == "keep"
        self.proc = popen([str(a) for a in argv], stdout=subprocess.PIPE, stderr=self.LOG[log],
                          universal_newlines=True, **popen_kw)
        line = self.proc.stdout.readline()
        if ready not in line:
            self.proc.kill()
            said = (self.proc.stderr.read() if keep_log else "").strip().splitlines()
            raise UserError("the server did not start ({}): {}".format(
                " ".join(os.path.basename(str(a)) for a in argv[:3]), (said[-1] if said else line.strip()) or "no output"))
        self.address = line.strip().rsplit(" ", 1)[1]
        self.host, _, port = self.address.rpartition(":")
        self.port = int(port)
        self.log = []
        self._reader = None
        if keep_log:
            self._reader = threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True)
            self._reader.start()

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


def serve_cloud(*args, **kw):
    """``cli.py serve-cloud ARGS`` started (add ``--port 0`` for a free port); keywords as for ``Started``."""
    return Started(cli_command("serve-cloud", *args), **kw)
