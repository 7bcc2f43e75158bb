"""Errors that carry a user-facing message naming the file and the fix.

Every function that validates user input raises :class:`VolGANError` (or a subclass) with a one-line,
readable message. The CLI prints that message and exits with status 2; Slicer widgets show it in an error
dialog. Programming errors (bugs) stay ordinary exceptions and keep their tracebacks.
"""

from __future__ import annotations

import os


class VolGANError(ValueError):
    """Bad input or an unusable file: the message says which file, what is wrong and how to fix it."""


class InputFileError(VolGANError):
    """A file that is missing, corrupt, unsupported, or holds data of the wrong kind."""

    def __init__(self, path: str | os.PathLike | None, problem: str, fix: str | None = None):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        self.fix = fix
        where = f"{self.path}: " if self.path else ""
        tail = f" ({fix})" if fix else ""
        super().__init__(f"{where}{problem}{tail}")


class Cancelled(Exception):
    """Raised inside a long-running function when its cancellation token was triggered."""
