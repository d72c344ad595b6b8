"""Errors of the exporter, reported by the CLI as one line each."""
from runtime.errors import UserError


class ExportError(UserError):
    """The export cannot go on: bad model name, split, weights or output directory."""


class VerificationError(ExportError):
    """A compiled artifact does not reproduce the unsplit model within tolerance."""
