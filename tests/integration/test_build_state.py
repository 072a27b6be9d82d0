"""``offload build`` (real Nix 2.8, local builds) with a state directory that cannot keep what
it should: a history written by a newer offload or damaged, build logs that cannot be written.
Those are estimates and copies, not the build: it builds, exits 0, makes its result link and
says what was not kept, once, on stderr. The same where the state directory cannot be made at
all (``$XDG_STATE_HOME`` a file, a read-only home): the run keeps its state in a temporary
directory, gone after it. And a run forgets history past its keeping."""

from __future__ import annotations

import os
import re
import shlex
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from offload.history.db import History
from offload.history.records import RunRecord
from tests.helpers.nix_files import nix_file, valid_locally
from tests.helpers.offload_run import offload_argv


def _build(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    file = nix_file(tmp_path, 'mk "kept" "echo kept > $out" {}\n')
    env = {**os.environ, "OFFLOAD_STATE_DIR": str(tmp_path / "state")}
    env.pop("NIX_CONFIG", None)
    done = subprocess.run(
        offload_argv(file, "--builders", "", "-j1", "--option", "substituters", "", *extra),
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


@pytest.mark.skipif(os.geteuid() != 0, reason="root passes the check of /proc's mode")
def test_a_report_that_cannot_be_written_after_the_build_is_a_warning(tmp_path: Path) -> None:
    # Checked before the run, the page is written after it, when its place may no longer
    # take a file (here /proc, which passes root's check and makes no file): the build stands.
    done, result = _build(tmp_path, "--report", "/proc/offload-report.html")
    assert done.returncode == 0, done.stderr
    assert result.is_symlink()
    assert valid_locally(done.stdout.strip())
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    said = "warning: the run's report was not written: /proc/offload-report.html: cannot write"
    hint = "(hint: name a file in a directory you may write, with room for it)"
    assert warnings == [f"{said} the report: No such file or directory {hint}"], done.stderr
    assert "error:" not in done.stderr


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


def _unkept_build(
    tmp_path: Path,
    env: dict[str, str],
    *,
    in_namespace: str = "",
    builder: str = "echo unkept > $out",
    quiet: bool = False,
) -> subprocess.CompletedProcess[str]:
    """``offload build --report`` of a fresh derivation with ``env`` (temporary files in
    ``tmp_path / "tmp"``); ``in_namespace``: shell commands run first in a mount namespace."""
    file = nix_file(tmp_path, f'mk "unkept" "{builder}" {{}}\n')
    (tmp_path / "tmp").mkdir()
    argv = offload_argv(file, "--builders", "", "-j1", "--option", "substituters", "")
    argv += ["--report", str(tmp_path / "run.html"), *(["-Q"] if quiet else [])]
    if in_namespace:
        script = f"{in_namespace} && exec {shlex.join(argv)}"
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
    unset = ("NIX_CONFIG", "OFFLOAD_STATE_DIR", "XDG_STATE_HOME")
    env = {k: v for k, v in os.environ.items() if k not in unset} | env
    env["TMPDIR"] = str(tmp_path / "tmp")
    return subprocess.run(
        argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )


def _built_without_state(done: subprocess.CompletedProcess[str], tmp_path: Path) -> str:
    """The one warning of a run whose state could not be kept, once the run is checked."""
    assert done.returncode == 0, done.stderr
    assert valid_locally(done.stdout.strip())
    assert (tmp_path / "result").is_symlink()
    # The run's page is made from the run's own (temporary) history; nothing else is left.
    page = (tmp_path / "run.html").read_text()
    # Neither it nor the line saying where it went names the run's id, which `offload report`
    # could not show: "offload: report of run 3c22d06b9b8f ... written to".
    assert re.search(r"<title>offload run of [-0-9: ]+ \(not kept\)</title>", page), page[:300]
    said = [line for line in done.stderr.splitlines() if line.startswith("offload: report of")]
    assert said == [
        (
            "offload: report of this run (not kept: no state directory to keep it in) (1 copy on 1"
            f" machine) written to {tmp_path / 'run.html'}"
        )
    ], done.stderr
    assert not re.search(r"\b[0-9a-f]{12}\b", said[0] + page.split("</title>")[0])
    assert list((tmp_path / "tmp").iterdir()) == []
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, done.stderr
    assert "internal error" not in done.stderr
    assert warnings[0].endswith(" directory you may write)")
    return warnings[0]


def test_a_state_directory_that_cannot_be_made_is_one_warning_and_the_build(
    tmp_path: Path,
) -> None:
    (tmp_path / "a-file").write_text("XDG_STATE_HOME names a file\n")
    done = _unkept_build(tmp_path, {"XDG_STATE_HOME": str(tmp_path / "a-file")})
    warning = _built_without_state(done, tmp_path)
    assert warning.startswith(
        f"warning: {tmp_path / 'a-file' / 'offload'}: cannot make the state directory:"
        f" {tmp_path / 'a-file'} is not a directory; this run's history, build logs and backoff"
        " are not kept (hint: it is $XDG_STATE_HOME/offload: point XDG_STATE_HOME"
    )
    assert (tmp_path / "a-file").read_text() == "XDG_STATE_HOME names a file\n"


def test_a_read_only_home_is_one_warning_and_the_build(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    mount = shlex.quote(str(home))
    done = _unkept_build(
        tmp_path,
        {"HOME": str(home)},
        in_namespace=f"mount --bind {mount} {mount} && mount -o remount,bind,ro {mount}",
    )
    warning = _built_without_state(done, tmp_path)
    state = home / ".local" / "state" / "offload"
    assert warning.startswith(
        f"warning: {state}: cannot make the state directory: Read-only file system; this run's"
    )
    assert list(home.iterdir()) == []


def test_a_failed_build_without_state_points_at_its_printed_tail_not_at_offload_log(
    tmp_path: Path,
) -> None:
    (tmp_path / "a-file").write_text("XDG_STATE_HOME names a file\n")
    env = {"XDG_STATE_HOME": str(tmp_path / "a-file")}
    done = _unkept_build(tmp_path, env, builder="echo the-last-words; exit 1")
    assert done.returncode == 100, done.stderr  # a build failure, as nix-build's
    assert "the-last-words" in done.stderr  # the tail, printed before the temporary state goes
    assert "offload log" not in done.stderr  # its log went with the temporary state
    hint = "hint: its log is above, and was not kept (no state directory)"
    assert done.stderr.rstrip().endswith(hint), done.stderr
    (tmp_path / "q").mkdir()  # -Q: the log is not shown whole, only its tail
    quiet = _unkept_build(tmp_path / "q", env, builder="echo the-last-words; exit 1", quiet=True)
    hint = "hint: its whole log was not kept (no state directory): rerun with -L to see it"
    assert quiet.stderr.rstrip().endswith(hint), quiet.stderr
    assert list((tmp_path / "tmp").iterdir()) == []
