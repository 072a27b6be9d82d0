"""`offload build` binds an option's values as nix-build does: the next words, whatever they
look like (``--argstr flags -O2``), while a ``--`` that is no value still ends the options."""

from __future__ import annotations

import argparse

import pytest

from offload import cli
from offload.cli.nix_values import ESCAPE, Unescaping, bind


def _build(*words: str) -> argparse.Namespace:
    return cli._parse(["build", *words])


@pytest.mark.parametrize(
    ("words", "dest", "value"),
    [
        (("--argstr", "flags", "-O2"), "auto_args", [("--argstr", "flags", "-O2")]),
        (("--arg", "n", "-x"), "auto_args", [("--arg", "n", "-x")]),
        (("--arg", "n", "-1"), "auto_args", [("--arg", "n", "-1")]),
        (("--argstr", "-x", "--"), "auto_args", [("--argstr", "-x", "--")]),
        (("--argstr", "a", "-A"), "auto_args", [("--argstr", "a", "-A")]),
        (("-I", "-dir"), "include", ["-dir"]),
        (("--include", "--"), "include", ["--"]),
        (("-A", "-x"), "attr", ["-x"]),
        (("-o", "-link"), "out_link", "-link"),
        (("--out-link", "-"), "out_link", "-"),
        (("--override-flake", "-a", "-b"), "override_flake", [["-a", "-b"]]),
        (("--add-root", "-r"), "ignored_value", "-r"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else None,
)
def test_a_value_starting_with_a_dash_is_the_options(
    words: tuple[str, ...], dest: str, value: object
) -> None:
    args = _build(*words, "x.nix")
    assert getattr(args, dest) == value
    assert args.paths == ["x.nix"]


def test_options_and_settings_keep_their_order_with_dash_values() -> None:
    args = _build("--option", "-x", "-1", "--cores", "2", "--option", "cores", "--")
    assert [tuple(pair) for pair in args.option] == [("-x", "-1"), ("cores", "2"), ("cores", "--")]


def test_a_double_dash_that_is_no_value_ends_the_options() -> None:
    args = _build("--argstr", "a", "--", "--", "-A", "x.nix")
    assert args.auto_args == [("--argstr", "a", "--")]
    assert args.attr == []
    assert args.paths == ["-A", "x.nix"]


def test_a_bad_dash_value_is_one_line_naming_it_as_given(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for words in (("--cores", "-x"), ("--timeout", "-1"), ("--log-format", "-x")):
        with pytest.raises(SystemExit) as exit_:
            _build(*words)
        assert exit_.value.code == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: offload build: argument {words[0]}"), err
        assert f"'{words[1]}'" in err
        assert "x00" not in err
        assert len(err.splitlines()) == 2  # error: and hint:


def test_missing_values_are_still_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _build("--argstr", "-x")
    assert "argument --argstr: expected 2 arguments" in capsys.readouterr().err


def test_bind_marks_values_only() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--two", nargs=2)
    parser.add_argument("-n", type=int)
    parser.add_argument("--switch", action="store_true")
    words = ["-x", "--two", "-a", "b", "--switch", "-n", "-3", "--", "--two", "-c"]
    assert bind(parser._actions, words) == [
        "-x", "--two", f"{ESCAPE}-a", "b", "--switch", "-n", f"{ESCAPE}-3", "--", "--two", "-c",
    ]  # fmt: skip
    assert parser.parse_args(bind(parser._actions, ["--two", "-a", "-b", "-n", "-3"])).n == -3


def test_unescaping_keeps_argparse_words_without_the_escape() -> None:
    assert Unescaping(None)(f"{ESCAPE}-O2") == "-O2"
    assert Unescaping(int)(f"{ESCAPE}-3") == -3
    assert Unescaping(str)("plain") == "plain"
    with pytest.raises(argparse.ArgumentTypeError, match=r"^invalid int value: '-x'$"):
        Unescaping(int)(f"{ESCAPE}-x")


def test_a_count_with_a_plus_sign_is_taken_as_nix_build_takes_it() -> None:
    # nix-build --cores +2 (and --timeout, --max-silent-time) builds; offload refused it as
    # "not a number", where a setting such as --max-free took it.
    args = _build("--cores", "+2", "--timeout", "+1K", "--max-silent-time", "+030")
    assert [tuple(pair) for pair in args.option] == [
        ("cores", "2"),
        ("timeout", "1024"),
        ("max-silent-time", "30"),
    ]
