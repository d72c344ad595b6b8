"""The edge path (cli.py, runtime/) stays valid Python 3.6 for JetPack 4.6."""
import ast
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


def _imports(path):
    tree = ast.parse(open(path).read())
    for node in tree.body:  # module level only: lazy imports inside functions are allowed
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module


def test_edge_path_never_imports_the_exporter_or_torch_at_module_level():
    paths = [os.path.join(REPO, "cli.py")]
    for root, _, files in os.walk(os.path.join(REPO, "runtime")):
        paths += [os.path.join(root, f) for f in files if f.endswith(".py")]
    for path in paths:
        for name in _imports(path):
            top = name.split(".")[0]
            assert top not in ("exporter", "torch", "torchvision", "onnx"), (path, name)
