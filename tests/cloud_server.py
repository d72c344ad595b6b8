"""Starts `cli.py serve-cloud` as a real subprocess on a free loopback port, for the tests (runtime.launch)."""
import os

from conftest import REPO

from runtime import launch


class ServerProcess(launch.Started):
    def __init__(self, artifacts, *extra):
        launch.Started.__init__(self, launch.cli_command("serve-cloud", "--port", "0", "--artifacts", artifacts,
                                                         *extra),
                                env=dict(os.environ, PYTHONUNBUFFERED="1"), cwd=REPO)
