"""The one exception type that the command line turns into a one-line message.

Anything raised as a ``UserError`` is a problem the user can fix (a bad flag, a
missing file, a corrupt artifact); its text names what is wrong and what to do.
Everything else is a bug and shows a traceback under ``--debug``.
"""


class UserError(Exception):
    """A problem with the user's input or environment, reported in one line."""

    exit_code = 1


class ManifestError(UserError):
    """A bundle's manifest or files do not match the contract."""
