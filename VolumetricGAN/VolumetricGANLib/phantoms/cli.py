"""`volgan phantom ...` subcommands."""

from __future__ import annotations


def register(sub) -> None:
    """Add the phantom subcommands to the ``volgan`` parser."""
    # The phantom subcommands are being added by the phantoms issue.
