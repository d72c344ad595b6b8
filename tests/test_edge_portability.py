"""The edge path (cli.py, runtime/) stays valid Python 3.6 for JetPack 4.6 (what it may import: test_layout.py)."""
import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO


def test_edge_path_is_python_3_6():
    vermin = shutil.which("vermin") or os.path.join(os.path.dirname(sys.executable), "vermin")
    if not os.path.exists(vermin):
        pytest.skip("vermin is not installed (pip install -e '.[test]')")
    proc = subprocess.run([vermin, "-t=3.6-", "--no-tips", "--violations",
                           "--eval-annotations", "cli.py", "runtime"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
