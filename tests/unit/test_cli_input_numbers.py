"""Numbers a user writes, read as Nix and nix-build read them: Nix's whole-number settings
(with unit prefixes, as Nix 2.23 on), simulate's --machines (ASCII digits as written), and a
demo's ratio to a lower bound that may be 0. Each was an internal error or a different number."""

from __future__ import annotations

import pytest

from offload.cli import demo, root_parser
from tests.unit.test_cli_errors import SAMPLE, _offload, _one_error


@pytest.mark.parametrize(
    "flag",
    [
        "--repeat x",
        "--log-lines -1",
        "--min-free 1X",
        "--http-connections 1.5",
        "--tarball-ttl ''",
        "--repeat \u0663",
    ],
)
def test_a_whole_number_setting_takes_what_nix_takes(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # nix-build 2.8: "error: setting 'repeat' has invalid value 'x'", exit 1; offload passed
    # it on, Nix warned, and the run went on.
    name, value = flag.split(" ", 1)
    value = "" if value == "''" else value
    status, err = _offload(["build", "-A", "x", name, value], capsys)
    assert status == 1
    _one_error(err)
    assert f"setting '{name[2:]}' has invalid value '{value}'" in err


def test_whole_number_settings_and_relaxed_sandbox_as_nix_build_takes_them() -> None:
    parser = root_parser()
    args = parser.parse_args(
        ["build", "-A", "x", "--repeat", "+2", "--min-free", "1g", "--relaxed-sandbox"]
    )
    # A unit prefix as Nix 2.23 on reads it, given as digits: Nix 2.8 reads none.
    assert args.option == [("repeat", "2"), ("min-free", str(1 << 30)), ("sandbox", "relaxed")]


@pytest.mark.parametrize(
    "machine", ["a:1:\u0663", "a:1:1_0", "a:1_0:1", "a:\u0664:1", "a:1:+2", "a:1:-1"]
)
def test_numbers_in_machines_are_ascii_as_written(
    machine: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # int() and float() read Arabic-Indic digits and "_" groups: "a:1:1_0" was 10 slots.
    status, err = _offload(["simulate", str(SAMPLE), "--machines", machine], capsys)
    assert status == 1
    _one_error(err)
    assert "speed must be a number and slots a whole number (0 to " in err


def test_a_demo_of_a_graph_of_no_work_has_no_ratio() -> None:
    # Its lower bound is 0: "internal error: ZeroDivisionError" after a successful build.
    assert demo.result_line(1, 0.4, 0.0).endswith("(lower bound 0.0 s, ratio n/a)")
    assert demo.result_line(30, 7.5, 5.0) == (
        "30 derivations built in 7.5 s (lower bound 5.0 s, ratio 1.50)"
    )
