"""A state directory that cannot be made (``$XDG_STATE_HOME`` naming a file, a home this user
may not write): the commands that live on their state (``history``, ``report``, ``use``) say so
in one error line naming it and a hint, exit 1 and make nothing; clearing a choice there is
done: none can be there."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
from pathlib import Path

import pytest

from offload.cli import main
from tests.helpers.users import as_another_user

_XDG_HINT = (
    "hint: it is $XDG_STATE_HOME/offload: point XDG_STATE_HOME (or OFFLOAD_STATE_DIR) at a"
    " directory you may write"
)


@pytest.fixture
def a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``$XDG_STATE_HOME``, a file; the system state directory moved into ``tmp_path``."""
    file = tmp_path / "a-file"
    file.write_text("not a directory\n")
    monkeypatch.delenv("OFFLOAD_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(file))
    for module in ("offload.cli.use", "offload.cli.history_file", "offload.cli.status"):
        monkeypatch.setattr(f"{module}.SYSTEM_STATE_DIR", tmp_path / "system")
    return file


@pytest.mark.parametrize(
    "argv",
    [
        ["history"],
        ["history", "--json"],
        ["report", "-o", "run.html"],
        ["report", "--hook", "-o", "run.html"],
        ["use", "local", "--for", "1h", "--builders", ""],
    ],
    ids=" ".join,
)
def test_commands_that_need_their_state_say_it_cannot_be_made(
    a_file: Path,
    argv: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    done = capsys.readouterr()
    said = f"error: {a_file / 'offload'}: cannot make the state directory: {a_file} is not a"
    assert done.err.splitlines() == [f"{said} directory", _XDG_HINT]
    assert done.out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # no page, no system state
    assert a_file.read_text() == "not a directory\n"


def test_clearing_a_choice_where_none_can_be_is_done(
    a_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["use", "--clear"]) == 0
    assert capsys.readouterr().out == "offload-hook uses the whole pool again\n"


def test_a_home_this_user_may_not_write_is_named_with_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A home of root's in a directory everyone may search: only writing there is refused.
    place = Path(tempfile.mkdtemp(prefix="ofh", dir="/tmp"))
    place.chmod(0o755)
    home = place / "home"
    home.mkdir(mode=0o755)
    monkeypatch.setenv("HOME", str(home))
    for name in ("OFFLOAD_STATE_DIR", "XDG_STATE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("offload.cli.history_file.SYSTEM_STATE_DIR", place / "system")

    def history() -> str:
        said = io.StringIO()
        with contextlib.redirect_stderr(said):
            code = main(["history"])
        return f"{code}\n{said.getvalue()}"

    said = as_another_user(history).splitlines()
    made = list(home.iterdir())
    shutil.rmtree(place)
    assert said == [
        "1",
        f"error: {home}/.local/state/offload: cannot make the state directory: Permission denied",
        "hint: it is under your home: set OFFLOAD_STATE_DIR to a directory you may write",
    ]
    assert made == []


_NO_HISTORY_HINT = (
    "hint: run a build first: `offload build` records its runs there (offload-hook, the builds"
    " it takes)"
)


@pytest.mark.parametrize(
    "argv",
    [
        ["report", "NO-SUCH-RUN"],
        ["report"],
        ["report", "--hook"],
        ["history", "--drv", "hello"],
        ["history", "--run", "feed"],
    ],
    ids=" ".join,
)
@pytest.mark.parametrize("made", [True, False], ids=["empty-dir", "no-dir"])
def test_reading_no_history_yet_says_so_and_makes_nothing(
    argv: list[str],
    made: bool,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # They made an empty history database (and the state directory) and then failed, or
    # listed nothing: the next read found a history, of nothing.
    state = tmp_path / "state"
    if made:
        state.mkdir()
    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(state))
    monkeypatch.setattr("offload.cli.history_file.SYSTEM_STATE_DIR", tmp_path / "system")
    monkeypatch.chdir(tmp_path)
    assert main([*argv, *(["-o", "run.html"] if argv[0] == "report" else [])]) == 1
    done = capsys.readouterr()
    assert done.err.splitlines() == [
        f"error: {state / 'history.sqlite'}: no history yet",
        _NO_HISTORY_HINT,
    ]
    assert done.out == ""
    assert sorted(p.name for p in tmp_path.rglob("*")) == (["state"] if made else [])


@pytest.mark.parametrize("json_out", [False, True], ids=["plain", "json"])
def test_listing_no_history_yet_is_a_note_and_empty_lists(
    json_out: bool,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Nothing to list is no failure: a script's `offload history --json` right after the
    install gets empty lists, exit 0 (and nothing is made)."""
    state = tmp_path / "state"
    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(state))
    monkeypatch.setattr("offload.cli.history_file.SYSTEM_STATE_DIR", tmp_path / "system")
    assert main(["history", *(["--json"] if json_out else [])]) == 0
    done = capsys.readouterr()
    note = f"note: {state / 'history.sqlite'}: no history yet ({_NO_HISTORY_HINT[6:]})"
    assert done.err.splitlines() == [note]
    if json_out:
        shown = json.loads(done.out)
        assert [shown[k] for k in ("runs", "machines", "builds", "estimates")] == [[], [], [], {}]
    else:
        assert done.out == ""
    assert not state.exists()
