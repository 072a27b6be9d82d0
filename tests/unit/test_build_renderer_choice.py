"""Which renderer `offload build`'s output flags choose, and whether machine warnings are
lines of their own (README: --quiet leaves out the live view and keeps the warnings)."""

from __future__ import annotations

import argparse

import pytest

from offload.cli import build_exec
from offload.cli.build_args import add_build_arguments


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_build_arguments(parser)
    return parser.parse_args([*argv, "-A", "x"])


@pytest.mark.parametrize("log_format", ["bar", "bar-with-logs", "raw"])
def test_quiet_is_plain_lines_with_the_warnings_whatever_the_format(log_format: str) -> None:
    # --quiet --log-format bar drew the live view on a terminal, and into a file said no
    # warning: a builder down or its key missing went unsaid.
    args = _args("--quiet", "--log-format", log_format)
    assert build_exec._kind(args) == "plain"
    assert build_exec._warnings_apart(args)


@pytest.mark.parametrize(
    ("argv", "mode"),
    [
        ((), None),
        (("--check",), "check"),
        (("--repair", "--check"), "check"),
        (("--check", "--repair"), "repair"),
    ],
)
def test_the_last_of_check_and_repair_holds_as_in_nix_build(
    argv: tuple[str, ...], mode: str | None
) -> None:
    # --repair --check repaired; nix-build's buildMode is the last one given.
    assert _args(*argv).mode == mode


@pytest.mark.parametrize(
    ("argv", "kind"),
    [
        ((), "auto"),
        (("--log-format", "bar"), "auto"),
        (("--log-format", "raw"), "plain"),
        # Nix 2.8's too (nix-build takes it; offload refused it as no choice of its own).
        (("--log-format", "raw-with-logs"), "plain"),
        (("--json",), "json"),
        (("--quiet", "--json"), "json"),
        (("--log-format", "internal-json", "--quiet"), "nixjson"),
    ],
)
def test_the_other_flags_choose_as_before(argv: tuple[str, ...], kind: str) -> None:
    assert build_exec._kind(_args(*argv)) == kind


@pytest.mark.parametrize(
    ("argv", "logs"),
    [
        ((), True),
        (("--log-format", "raw-with-logs"), True),
        (("--log-format", "bar-with-logs"), True),
        # Nix 2.8's nix-build shows no build log with these two; offload showed them with raw.
        (("--log-format", "raw"), False),
        (("--log-format", "bar"), False),
        (("--log-format", "raw", "-L"), True),  # offload's -L: logs on, whatever the format
        (("-Q",), False),
    ],
)
def test_build_logs_are_shown_as_nix_build_shows_them(argv: tuple[str, ...], logs: bool) -> None:
    assert build_exec._print_logs(_args(*argv)) is logs
