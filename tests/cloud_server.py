"""Starts `cli.py serve-cloud` as a real subprocess on a free loopback port, for the tests."""
import os
import signal
import subprocess
import sys
import threading

from conftest import REPO


class ServerProcess(object):
    def __init__(self, artifacts, *extra):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(REPO, "cli.py"), "serve-cloud", "--port", "0", "--artifacts",
             str(artifacts)] + [str(e) for e in extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
        line = self.proc.stdout.readline()
        if not line.startswith("serve-cloud listening on "):
            self.proc.kill()
            raise RuntimeError("server did not start: {} {}".format(line, self.proc.stderr.read()))
        self.address = line.rsplit(" ", 1)[1].strip()
        self.host, port = self.address.rsplit(":", 1)
        self.port = int(port)
        self.log = []
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self):
        for line in self.proc.stderr:
            self.log.append(line)

    def stop(self):
        """SIGTERM, as a user's Ctrl-C or a service manager would; return the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self._reader.join(10)
        return code

    def log_text(self):
        return "".join(self.log)
