"""Argument types the subcommands share.

An empty value (an unset variable in a script) is refused naming its argument, never taken as
"no value": ``offload report ''`` reported the latest run, ``offload history --run ''`` matched
every run, ``offload machines --reset ''`` cleared nothing without a word."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

__all__ = ["FLEET_DIR_HELP", "doc_help", "machine_names", "nonempty", "nonempty_path"]


# What ``fleet.spec.default_fleet_dir`` picks, for the ``--dir`` help of `fleet` and `demo`.
FLEET_DIR_HELP = (
    "fleet directory (default: $OFFLOAD_FLEET_DIR, else the state directory's: "
    "$OFFLOAD_STATE_DIR/fleet, $XDG_STATE_HOME/offload/fleet or ~/.local/state/offload/fleet)"
)


def doc_help(doc: str | None) -> str:
    """A module docstring as a command's --help description: its ``literal`` markup in single
    backquotes, as the other help texts and the README write commands (reST's double ones
    are for the source reader)."""
    return (doc or "").replace("``", "`").replace("::\n", ":\n")


def nonempty_path(text: str) -> Path:
    """A path argument: ``Path("")`` is the current directory, never what an empty value
    (an unset variable in a script) meant."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path")
    return Path(text)


def page_file(text: str) -> str:
    """A file to write a page to (``--report``, ``-o``): not empty, and not a directory
    named with its slash, which ``Path`` drops (`-o newdir/` wrote a file named newdir)."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path")
    if text.endswith("/"):
        raise argparse.ArgumentTypeError(f"'{text}' names a directory: name a file")
    return text


def nonempty(what: str) -> Callable[[str], str]:
    """A text argument (an id, a name) that may not be empty: ``what`` it is, for the error."""

    def check(text: str) -> str:
        if not text:
            raise argparse.ArgumentTypeError(f"an empty {what}")
        return text

    check.__name__ = what
    return check


def machine_names(text: str) -> str:
    """Machines, comma-separated (``fast,@gpu``): one at least, as ``--on`` wants them."""
    if not any(name.strip() for name in text.split(",")):
        raise argparse.ArgumentTypeError("names no machine (offload machines lists them)")
    return text
