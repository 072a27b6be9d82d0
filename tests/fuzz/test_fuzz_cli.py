"""Command-line arguments: what a user (or a script) passes to `offload build` and friends.

Contract (``cli``): argparse's own errors are two lines, ``error: ...`` and ``hint: ...``, and
exit 1; values argparse takes are then checked by the pool (``load_pool`` and ``Pool.select``:
``--builders``, ``--option``, ``--on``/``--exclude``, ``-j``), which returns a pool or raises a
one-line ``ConfigError``. Nothing here starts Nix: its settings are given.
"""

from __future__ import annotations

import argparse
import contextlib
import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from offload.cli import _parser
from offload.config.pool import Pool, load_pool
from offload.config.settings import NixSettings
from offload.errors import ConfigError
from tests.fuzz.support import FUZZ, outcome

PARSER = _parser()
SETTINGS = NixSettings({"system": "x86_64-linux", "max-jobs": "2", "builders": ""})
SPEC = "ssh://fast x86_64-linux - 4 4 big\nssh://slow x86_64-linux\n"
WORDS = ["-j", "--max-jobs", "--option", "--on", "--exclude", "--builders", "--json", "-A",
         "--dry-run", "auto", "0", "1", "-1", "99999999999999999999", "1" * 5000, "1_0", "٣",
         "fast", "slow", "local", "@big", "@", ",", "fast,slow", "builders", "max-jobs",
         "substituters", "a\nb", "#", "=", "", " ", "\x00", "\udcff", "\x1b[2J", SPEC]  # fmt: skip
argvs = st.lists(st.sampled_from(WORDS) | st.text(max_size=6), max_size=10)


def _parse(argv: list[str]) -> argparse.Namespace | None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            return PARSER.parse_args(["build", *argv])
        except SystemExit as exit_:
            code = exit_.code
    lines = err.getvalue().splitlines()
    assert code in {0, 1}, (code, lines)
    if code:
        assert len(lines) == 2, lines
        assert lines[0].startswith("error: "), lines
        assert lines[1].startswith("hint: "), lines
    return None


@FUZZ
@given(argvs)
def test_build_arguments(argv: list[str]) -> None:
    args = _parse(argv)
    if args is None:
        return
    options = {str(name): str(value) for name, value in args.option}

    def pool() -> Pool:
        loaded = load_pool(
            builders=args.builders if args.builders is not None else SPEC,
            config=None,
            env={},
            options=options,
            nix_settings=SETTINGS,
        )
        return loaded.select(on=args.on, exclude=args.exclude, max_jobs=args.max_jobs)

    outcome(pool, ConfigError)


@pytest.mark.parametrize("value", ["1\n2", "x" * 100 + "\n"])
def test_a_bad_value_with_a_line_break_is_said_on_one_line(value: str) -> None:
    assert _parse(["-j", value]) is None


def test_an_option_name_with_a_line_break_is_said_on_one_line() -> None:
    def pool() -> Pool:
        return load_pool(
            builders="", config=None, env={}, options={"a\nb": "1"}, nix_settings=SETTINGS
        )

    result = outcome(pool, ConfigError)
    assert isinstance(result, ConfigError)
    assert "--option 'a\\nb' '1'" in result.message


def test_an_unknown_name_with_a_line_break_is_said_on_one_line() -> None:
    pool = load_pool(builders=SPEC, config=None, env={}, nix_settings=SETTINGS)
    with pytest.raises(ConfigError, match="no machine named") as raised:
        pool.select(on=["fa\nst"])
    assert "'fa\\nst'" in raised.value.message
