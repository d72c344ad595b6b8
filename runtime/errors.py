"""The exception types that the command line turns into a one-line message.

Anything raised as a ``UserError`` is a problem the user can fix (a bad flag, a
missing file, a corrupt artifact); its text names what is wrong and what to do.
Everything else is a bug and shows a traceback under ``--debug``.  A ``CodedError``
also carries a short machine-readable ``code`` (what an ERROR frame sends): code
decides, the message explains.  ``file_start`` helps a message say what a user's file is
instead of relaying a library's guess (numpy's and torch's suggest loading it unsafely).

Python 3.6 syntax: this module runs on the Jetson.
"""
import re

# the prefix of a line another process printed as its error, relayed inside one of ours
_RELAYED_ERROR = re.compile(r"(^|: )error: ")


def relayed(message):
    """``message`` without the ``error: `` that a line relayed from another process (a child's last line, the
    cloud's words) began with: the line that shows it says ``error:`` once."""
    return _RELAYED_ERROR.sub(r"\1", message)


class UserError(Exception):
    """A problem with the user's input or environment, reported in one line."""

    exit_code = 1


class Interrupted(UserError):
    """The user stopped the command (SIGINT, Ctrl-C) after part of its work: exit 130, as a shell reports it."""

    exit_code = 130


class CodedError(UserError):
    """A UserError with a ``code`` that programs act on (an ERROR frame's code, e.g. ``bad_token``)."""

    def __init__(self, code, message):
        UserError.__init__(self, message)
        self.code = code


class ManifestError(UserError):
    """A bundle's manifest or files do not match the contract."""


def file_start(path, count=16):
    """How the file at ``path`` begins, for a message that says what a file is instead of what was expected:
    ``it is empty``, or ``it begins b'...'`` (its first ``count`` bytes)."""
    with open(path, "rb") as f:
        head = f.read(count)
    return "it begins {!r}".format(head) if head else "it is empty"
