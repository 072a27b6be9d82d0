"""`offload build`: a drop-in for nix-build."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("build", help="build derivations like nix-build, over the pool")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    del args
    return 1
