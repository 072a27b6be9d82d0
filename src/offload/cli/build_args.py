"""The command line of `offload build`: nix-build's flags and offload's own, one parser."""

from __future__ import annotations

import argparse
from pathlib import Path

from offload.cli.machines import add_pool_arguments

__all__ = ["add_build_arguments"]


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    """Every argument of `offload build` on ``parser``."""
    parser.add_argument("paths", nargs="*", metavar="FILE|DRV", help="default: ./default.nix")
    parser.add_argument("-A", "--attr", action="append", default=[], help="attribute to build")
    parser.add_argument("--arg", nargs=2, action="append", default=[], metavar=("NAME", "EXPR"))
    parser.add_argument("--argstr", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    parser.add_argument("-E", "--expr", help="build the derivations this expression evaluates to")
    parser.add_argument("-o", "--out-link", default="result", help="symlink name (./result)")
    parser.add_argument("--no-out-link", action="store_true", help="make no result symlinks")
    parser.add_argument(
        "-k",
        "--keep-going",
        action="store_true",
        help="go on with what does not depend on a failure",
    )
    parser.add_argument(
        "-L", "--print-build-logs", action="store_true", help="stream build logs to stderr"
    )
    parser.add_argument(
        "--json", action="store_true", help="write one JSON event per line to stdout"
    )
    parser.add_argument(
        "--fetch-all",
        action="store_true",
        help="copy every built output here, not only the requested ones (as Nix does)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (what is built where, estimated time) and build nothing",
    )
    parser.add_argument(
        "--report",
        type=Path,
        metavar="FILE",
        help="write the run's HTML report (timeline per machine) to FILE at the end",
    )
    add_pool_arguments(parser)
