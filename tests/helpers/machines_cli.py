"""`offload machines` run in this process, its output captured (pytest's capsys)."""

from __future__ import annotations

import argparse

import pytest

from offload.cli import machines as machines_cli

__all__ = ["run_machines_cli"]


def run_machines_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``offload ARGV`` (``machines ...``): its exit status, stdout and stderr."""
    parser = argparse.ArgumentParser(prog="offload")
    machines_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    status = args.func(args)
    out, err = capsys.readouterr()
    return status, out, err
