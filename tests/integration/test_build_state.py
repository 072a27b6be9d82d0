"""``offload build`` (real Nix 2.8, local builds) with a state directory that cannot keep what
it should: a history written by a newer offload or damaged, build logs that cannot be written.
Those are estimates and copies, not the build: it builds, exits 0, makes its result link and
says what was not kept, once, on stderr. And a run forgets history past its keeping."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from offload.history.db import History
from offload.history.records import RunRecord
from tests.helpers.nix_files import nix_file, valid_locally
from tests.helpers.offload_run import offload_argv


def _build(tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    file = nix_file(tmp_path, 'mk "kept" "echo kept > $out" {}\n')
    env = {**os.environ, "OFFLOAD_STATE_DIR": str(tmp_path / "state")}
    env.pop("NIX_CONFIG", None)
    done = subprocess.run(
        offload_argv(file, "--builders", "", "-j1", "--option", "substituters", ""),
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done, tmp_path / "result"


def _newer(state: Path) -> None:
    with sqlite3.connect(state / "history.sqlite") as db:
        db.execute("PRAGMA user_version = 99")


def _damaged(state: Path) -> None:
    (state / "history.sqlite").write_bytes(b"SQLite format 3\x00" + b"\xff" * 4096)


def _no_logs(state: Path) -> None:
    (state / "logs").write_text("a file where the logs directory goes\n")


@pytest.mark.parametrize(
    ("spoil", "said"),
    [
        (_newer, "written by a newer offload (schema 99); this run builds without estimates"),
        (_damaged, "; this run builds without estimates and is not kept in history"),
        (_no_logs, "warning: build logs are not kept: cannot write build logs in "),
    ],
    ids=["newer history", "damaged history", "logs unwritable"],
)
def test_what_cannot_be_kept_is_said_and_the_build_stands(
    tmp_path: Path, spoil: object, said: str
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    spoil(state)  # type: ignore[operator]
    done, result = _build(tmp_path)
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stderr.splitlines() if said in line], done.stderr
    assert result.is_symlink()
    assert valid_locally(done.stdout.strip())
    assert "internal error" not in done.stderr


def test_a_build_forgets_old_runs_and_keeps_its_own(tmp_path: Path) -> None:
    state = tmp_path / "state"
    long_ago = time.time() - 100 * 86_400
    old = RunRecord("old-run", long_ago, long_ago + 5, ("x",), "ok", (), None, None)
    with History(state / "history.sqlite") as history:
        history.record_run(old, [])
    done, _ = _build(tmp_path)
    assert done.returncode == 0, done.stderr
    with History(state / "history.sqlite") as history:
        runs = history.runs(limit=None)
    assert [run.asked for run in runs] == [("kept",)]
