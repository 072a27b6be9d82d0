"""`offload demo`: the main job on a local fleet."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("demo", help="build a sample graph on a local three-member fleet")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    del args
    return 1
