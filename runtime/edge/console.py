"""What the edge's commands say on stderr as they go: one line each, prefixed with the command the user ran.

``cli.py`` names the command once (``set_command``) as it starts; every module of ``runtime/edge`` says its lines
through ``say``, so ``sweep`` prints ``sweep: ...`` even where the line comes from the code ``run-edge`` shares.

Python 3.6 syntax.
"""
import sys

_command = ["edgesplit"]  # the command's name until cli.py sets it (a caller that is not cli.py: the tool's name)


def set_command(name):
    """Name the command the lines come from (``run-edge``, ``sweep``, ``plan``, ...)."""
    _command[0] = name


def say(message):
    sys.stderr.write("{}: {}\n".format(_command[0], message))
    sys.stderr.flush()
