"""Command group placeholder; filled in by its package's issue."""

from __future__ import annotations


def register(sub) -> None:
    """Add this group's subcommands to `sub`."""
