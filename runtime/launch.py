"""This tool's own commands, run as subprocesses (the demo's steps, the server's on-demand exports).

Running ``cli.py export`` in a child process keeps the runtime free of exporter
imports.  Python 3.6 syntax.
"""
import os
import sys

CLI = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cli.py")


def cli_command(*args):
    """argv for ``python cli.py ARGS`` with this interpreter."""
    return [sys.executable, CLI] + [str(a) for a in args]
