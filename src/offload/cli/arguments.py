"""Argument types the subcommands share."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["nonempty_path"]


def nonempty_path(text: str) -> Path:
    """A path argument: ``Path("")`` is the current directory, never what an empty value
    (an unset variable in a script) meant."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path")
    return Path(text)
