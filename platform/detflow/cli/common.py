"""What the command modules share: :func:`command_group` (a ``detflow AREA …`` sub-app)."""
from __future__ import annotations

import typer

__all__ = ["command_group"]


def command_group(summary: str, example: str) -> typer.Typer:
    """A command group whose help is ``summary`` and ``Example: example``; run bare, it prints its help."""
    return typer.Typer(help=f"{summary}\n\nExample: {example}", no_args_is_help=True)
