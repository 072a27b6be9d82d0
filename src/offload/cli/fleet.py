"""`offload fleet`: a local fleet of builders for tests and demos."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("fleet", help="manage a local fleet of loopback builders")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    del args
    return 1
