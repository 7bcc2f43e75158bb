"""`volgan import`, `volgan generate` (and later `steer`) subcommands."""

from __future__ import annotations


def register(sub) -> None:
    """Add this package's subcommands to the ``volgan`` parser."""
    # The generation subcommands are being added by the generation issue.
