import os
import sqlite3
import subprocess
import sys
from typing import Any

import pytest

from offload.errors import StoreError
from offload.history.db import History
from offload.history.records import BuildRecord, RunRecord


def _rec(pname, machine, duration, *, status="built", finished=100.0, drv="/nix/store/x.drv"):
    return BuildRecord("run", drv, pname, machine, finished - duration, finished, status)


def test_durations_take_the_median_of_recent_successes_per_machine(tmp_path):
    with History(tmp_path / "h.sqlite") as history:
        history.record(
            [
                _rec("hello", "fast", 1.0, finished=1),
                _rec("hello", "fast", 3.0, finished=2),
                _rec("hello", "fast", 2.0, finished=3),
                _rec("hello", "slow", 8.0, finished=4),
                _rec("hello", "slow", 50.0, status="failed", finished=5),
                _rec("other", "fast", 9.0, finished=6),
            ]
        )
        durations = history.durations(["hello", "missing"])
    assert durations == {"hello": {"fast": 2.0, "slow": 8.0}}


def test_only_the_last_records_count(tmp_path):
    with History(tmp_path / "h.sqlite") as history:
        history.record([_rec("a", "m", 100.0, finished=i) for i in range(1, 6)])
        history.record([_rec("a", "m", 1.0, finished=i) for i in range(10, 16)])
        assert history.durations(["a"], per_name=5) == {"a": {"m": 1.0}}


def test_history_survives_reopening_and_has_tight_mode(tmp_path):
    path = tmp_path / "state" / "h.sqlite"
    with History(path) as history:
        history.record([_rec("a", "m", 2.0, drv="/nix/store/abc-a.drv")])
    with History(path) as history:
        (record,) = history.builds(drv_path="/nix/store/abc-a.drv")
    assert record.duration == pytest.approx(2.0)
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_newer_schema_is_refused_with_a_clear_error(tmp_path):
    path = tmp_path / "h.sqlite"
    History(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(StoreError, match="newer offload"):
        History(path)


def test_a_file_whose_tables_were_never_written_is_no_older_offloads(tmp_path):
    # A first write cut short by a full disk left a file of schema 0: read as "written by an
    # older offload (schema 0)" (interrupts tester); a writer makes its tables as ever.
    path = tmp_path / "h.sqlite"
    sqlite3.connect(path).close()
    path.write_bytes(b"")
    db = sqlite3.connect(path)
    db.execute("PRAGMA page_size = 4096")
    db.execute("VACUUM")
    db.close()
    with pytest.raises(StoreError, match=r"holds no history yet \(its tables were never written\)"):
        History(path, read_only=True)
    with History(path) as history:
        assert history.runs() == []


def test_a_build_of_no_run_keeps_its_inputs_newest_first(tmp_path):
    with History(tmp_path / "h.sqlite") as history:
        history.record([_rec("b", "fast", 1.0, drv="/nix/store/b.drv")], deps={
            "/nix/store/b.drv": ("/nix/store/a.drv", "/nix/store/c.drv"),
            "/nix/store/other.drv": ("/nix/store/a.drv",),  # not recorded here: left out
        })  # fmt: skip
        history.record([_rec("d", "fast", 1.0, drv="/nix/store/d.drv")], deps={
            "/nix/store/d.drv": ("/nix/store/b.drv",),
        })  # fmt: skip
        assert history.recent_deps() == [
            ("/nix/store/d.drv", "/nix/store/b.drv"),
            ("/nix/store/b.drv", "/nix/store/c.drv"),
            ("/nix/store/b.drv", "/nix/store/a.drv"),
        ]
        assert history.recent_deps(limit=1) == [("/nix/store/d.drv", "/nix/store/b.drv")]


def test_a_history_locked_by_another_process_is_said_so_not_damaged(tmp_path):
    # Held past the busy timeout: the hint must not be the damaged file's "move it away".
    path = tmp_path / "history.sqlite"
    History(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    run = RunRecord("run", 99.0, 100.0, ("hello",), "ok", (), None, None)
    try:
        with pytest.raises(StoreError) as caught, History(path, wait=0.1) as history:
            history.record_run(run, [])
    finally:
        holder.close()
    assert caught.value.message.endswith("cannot use the history database: database is locked")
    assert caught.value.hint is not None
    assert caught.value.hint.startswith("another process holds it")


def test_a_wait_for_a_busy_history_is_said_on_stderr_before_it_ends(tmp_path):
    # Another process holds the file: `offload history` waits up to 30 s for it, and says so
    # once it has waited a moment rather than look hung; it goes on once the lock is let go.
    path = tmp_path / "history.sqlite"
    History(path).close()
    with sqlite3.connect(path) as db:  # an older offload's file: opening it adds what is missing
        db.execute("DROP TABLE meta")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    env = {**os.environ, "OFFLOAD_STATE_DIR": str(tmp_path)}
    with subprocess.Popen(
        [sys.executable, "-m", "offload", "history", "--last", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stderr is not None
        try:
            # Said while still waiting: the lock is held until that line has been read (a
            # note that the nix-daemon's hook keeps a history may come first).
            said = [proc.stderr.readline()]
            while said[-1] and not said[-1].startswith("note: history is busy"):
                said.append(proc.stderr.readline())
        finally:
            holder.close()
        rest = proc.stderr.read()
    assert said[-1] == f"note: history is busy (another offload?), waiting up to 30 s: {path}\n"
    assert proc.returncode == 0, rest
    assert "Traceback" not in rest


def test_reading_the_history_does_not_wait_for_a_writer(tmp_path):
    # offload history, report and a dry run took the write lock to check the schema: behind
    # a writer (a pruning pass, another run's records) they waited 30 s, then failed.
    path = _with_run(tmp_path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("DELETE FROM builds")  # not committed: readers see the file as it was
    try:
        with History(path, wait=0.1) as history:
            assert [r.run_id for r in history.runs()] == ["run"]
            assert len(history.builds(run_id="run")) == 1
    finally:
        holder.close()


class _Busy:
    """A connection whose BEGIN IMMEDIATE is refused once with ``code`` (SQLite's extended
    result codes: SQLITE_BUSY_RECOVERY is 261, its primary code SQLITE_BUSY in the low byte)."""

    def __init__(self, real: sqlite3.Connection, code: int) -> None:
        self.real, self.code, self.refused = real, code, False

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "BEGIN IMMEDIATE" and not self.refused:
            self.refused = True
            exc = sqlite3.OperationalError("database is locked")
            exc.sqlite_errorcode = self.code
            raise exc
        return self.real.execute(sql, *args)


@pytest.mark.parametrize("code", [sqlite3.SQLITE_BUSY, 261, 517])
def test_a_busy_refusal_by_its_extended_code_is_waited_for(tmp_path, code):
    history = History(tmp_path / "history.sqlite", on_busy=lambda _text: None)
    real = history._db
    history._db = _Busy(real, code)  # type: ignore[assignment]
    try:
        history._begin()  # refused once, then asked again with the whole wait
        real.execute("COMMIT")
    finally:
        history._db = real
        history.close()


@pytest.mark.parametrize(
    ("make", "hint"),
    [
        (lambda p: p.mkdir(), "a directory is in its place: move it away"),
        (lambda p: p.parent.rmdir() or p.parent.write_text(""), "it must be a file this user"),
    ],
    ids=["directory", "parent-a-file"],
)
def test_a_history_that_cannot_be_opened_says_what_to_do(tmp_path, make, hint):
    # SQLite's own "unable to open database file" was said with no hint at all.
    path = tmp_path / "state" / "history.sqlite"
    path.parent.mkdir()
    make(path)
    with pytest.raises(StoreError, match="cannot open the history database") as raised:
        History(path)
    assert raised.value.hint is not None
    assert raised.value.hint.startswith(hint), raised.value.hint


def _made(tmp_path):
    path = tmp_path / "history.sqlite"
    History(path).close()
    return path


def test_a_history_whose_wal_file_cannot_be_used_says_which_files_to_check(tmp_path):
    # SQLite says only "unable to open database file": the error had no hint.
    path = _made(tmp_path)
    (tmp_path / "history.sqlite-wal").mkdir()
    with (
        pytest.raises(StoreError, match="cannot use the history database") as raised,
        History(path) as history,
    ):
        history.runs()
    assert raised.value.hint is not None
    assert "-wal, -shm and -journal files" in raised.value.hint


def test_a_history_with_a_table_dropped_is_damaged(tmp_path):
    # "no such table: runs" was "cannot use", with no hint: it is damage, to move away.
    path = _made(tmp_path)
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE runs")
    with (
        pytest.raises(StoreError, match="the history database is damaged") as raised,
        History(path) as history,
    ):
        history.runs()
    assert raised.value.hint is not None
    assert raised.value.hint.startswith("move the file away")


def _with_run(tmp_path):
    """A history of one run of one build, made as offload makes it."""
    path = _made(tmp_path)
    with History(path) as history:
        run = RunRecord("run", 99.0, 100.0, ("hello",), "ok", (), None, None)
        history.record_run(run, [_rec("hello", "fast", 1.0)])
    return path


@pytest.mark.parametrize(
    ("edit", "reader"),
    [
        # Bytes Python cannot read as text: its own error, with no SQLite error code.
        ("UPDATE builds SET pname = CAST(x'ffc3' AS TEXT)", "builds"),
        ("UPDATE runs SET started = 1e300", "runs"),  # past any calendar
        ("UPDATE runs SET started = 'abc'", "runs"),
        ("UPDATE builds SET bytes_sent = 'lots'", "builds"),
        ("UPDATE phases SET started = 'x'", "builds"),
        ("""UPDATE runs SET machines = '[{"name": "m", "speed": 1e999, "slots": 1}]'""", "runs"),
        # Read whole, then a TypeError or OverflowError where offload history formatted them.
        ("UPDATE runs SET asked = '[1, 2]'", "runs"),
        ("UPDATE runs SET lower_bound = 'abc'", "runs"),
        ("UPDATE runs SET estimate = 1e999", "runs"),
        ("""UPDATE runs SET machines = '[{"name": 7, "speed": 1, "slots": 1}]'""", "runs"),
        ("""UPDATE runs SET machines = '{"a": 1}'""", "runs"),
        ("UPDATE builds SET status = x'ff'", "builds"),
    ],
)
def test_a_history_holding_what_offload_never_wrote_is_damaged(tmp_path, edit, reader):
    # Each was an internal error (AttributeError, OverflowError, TypeError) in offload
    # history, report, and the estimates of offload build and offload-hook.
    path = _with_run(tmp_path)
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO phases (build_id, phase, started, finished) VALUES (1, 'b', 1, 2)")
        db.execute(edit)
    reads = {"runs": History.runs, "builds": lambda h: h.builds(run_id="run")}
    with History(path) as history:
        with pytest.raises(StoreError) as raised:
            reads[reader](history)
        assert "the history database is damaged" in raised.value.message
        assert raised.value.hint is not None
        assert raised.value.hint.startswith("move the file away")


_OPEN = """
import sys
from pathlib import Path
from offload.errors import StoreError
from offload.history.db import History
try:
    History(Path(sys.argv[1])).close()
except StoreError as exc:
    print(exc.message)
    print(exc.hint)
"""


@pytest.mark.parametrize("end", ["", "-journal", "-wal", "-shm"])
def test_a_fifo_in_place_of_the_history_or_a_journal_is_an_error_not_a_hang(tmp_path, end):
    # SQLite opened a hot journal that was a FIFO and blocked for good, deaf to SIGTERM.
    path = _made(tmp_path)
    odd = tmp_path / f"history.sqlite{end}"
    odd.unlink(missing_ok=True)
    os.mkfifo(odd)
    done = subprocess.run(
        [sys.executable, "-c", _OPEN, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    message, hint = done.stdout.splitlines()
    assert message == f"{odd}: not a file, which the history database and its journals are"
    assert hint.startswith("move it away: ")
