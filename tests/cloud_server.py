"""Starts `cli.py serve-cloud` as a real subprocess on a free loopback port, for the tests (runtime.launch).

tests/fixtures is on its PYTHONPATH, so `--model tiny_models:classifier` exports on demand, as run_cli's exports do."""
import os

from conftest import REPO

from runtime import launch

FIXTURES = os.path.join(REPO, "tests", "fixtures")


class ServerProcess(launch.Started):
    def __init__(self, artifacts, *extra):
        launch.Started.__init__(self, launch.cli_command("serve-cloud", "--port", "0", "--artifacts", artifacts,
                                                         *extra),
                                env=dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=FIXTURES), cwd=REPO)
