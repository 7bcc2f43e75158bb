"""`volgan morphometry ...` subcommands."""

from __future__ import annotations


def register(sub) -> None:
    """Add this package's subcommands to the ``volgan`` parser."""
    # The morphometry subcommands are being added by the MorphometryLogic issue.
