"""An error is one line whatever it quotes: a path, a name or a value with a line break or
another control character in it is said escaped, not spread over lines of the terminal."""

from __future__ import annotations

from pathlib import Path

import pytest

from offload.cli import main


def _lines(argv: list[str], capsys: pytest.CaptureFixture[str]) -> list[str]:
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's own exits
        status = int(exit_.code or 0)
    assert status == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines, "no error said"
    assert all(line.startswith(("error: ", "hint: ")) for line in lines), lines
    assert all(line.isprintable() for line in lines), lines
    return lines


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        # A DAG file, an offload.toml, a fleet directory whose names hold a line break
        (["simulate", "a\nb"], "a\\nb: cannot read DAG file"),
        (["machines", "--builders", "", "--config", "a\nb"], "a\\nb: no such file"),
        (["fleet", "env", "--dir", "/nonexistent/a\nb"], "no fleet in /nonexistent/a\\nb"),
        # A run id with a terminal's escape sequence, and one that was no UTF-8
        (["report", "\x1b[2J", "--daemon"], "'\\x1b[2J': offload-hook's builds are no run"),
        (["simulate", "/nonexistent/\udcff"], "/nonexistent/\\xff: cannot read DAG file"),
    ],
    ids=["dag", "config", "fleet-dir", "escape", "not-utf8"],
)
def test_a_control_character_in_what_an_error_quotes_is_escaped(
    argv: list[str],
    said: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    lines = _lines(argv, capsys)
    assert said in lines[0], lines
