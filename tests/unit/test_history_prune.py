"""What the history forgets (``offload.history.prune``), on real SQLite files in tmp_path."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest

from offload.history import db
from offload.history.db import History
from offload.history.prune import BATCH, KEEP_PER_NAME, PRUNE_CLAIM, PRUNED_RUN
from offload.history.records import BuildRecord, MachineRecord, PhaseRecord, RunRecord
from offload.history.schema import MIGRATIONS

NOW = 1_800_000_000.0
SCHEMA_2 = ";".join(MIGRATIONS) + ";PRAGMA user_version = 2;"
DAY = 86_400.0


def _drv(name: str, n: int = 0) -> str:
    return f"/nix/store/{'a' * 31}{n % 10}-{name}-1.drv"


def _build(name: str, days_ago: float, *, status: str = "built", machine: str = "m") -> BuildRecord:
    end = NOW - days_ago * DAY
    phase = PhaseRecord("building", end - 5.0, end)
    run_id = f"hook-{name}-{days_ago}"
    return BuildRecord(run_id, _drv(name), name, machine, end - 5.0, end, status, phases=(phase,))


def _run(run_id: str, days_ago: float, names: list[str]) -> tuple[RunRecord, list[BuildRecord]]:
    end = NOW - days_ago * DAY
    builds = [BuildRecord(run_id, _drv(n), n, "m", end - 10.0, end - 1.0, "built") for n in names]
    deps = {_drv(n): (_drv("dep"),) for n in names}
    machines = (MachineRecord("m", 1.0, 2),)
    run = RunRecord(run_id, end - 20.0, end, tuple(names), "ok", machines, 9.0, 8.0, deps)
    return run, builds


def _rows(path: Path, table: str) -> int:
    with closing(sqlite3.connect(path)) as db:
        return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])  # noqa: S608


def test_old_builds_go_but_each_names_last_successes_stay(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    with History(path) as history:
        # 'rare' built 8 times long ago; 'broken' only failed long ago; 'fresh' built lately.
        history.record([_build("rare", 200 - i) for i in range(8)])
        history.record([_build("broken", 120, status="failed")])
        history.record([_build("fresh", 3)])
        before = history.durations(["rare", "fresh"])
        pruned = history.prune_if_due(NOW, budget=60)
        assert pruned is not None
        assert pruned.builds == 8 - KEEP_PER_NAME + 1
        kept = history.builds(limit=None)
        assert sorted(b.pname for b in kept) == ["fresh"] + ["rare"] * KEEP_PER_NAME
        # The survivors are the newest of their name: what estimates are learned from.
        assert min(b.finished for b in kept if b.pname == "rare") == NOW - 197 * DAY
        assert history.durations(["rare", "fresh"]) == before
    # Old builds keep no phases, the survivors' included: only estimates need them.
    assert _rows(path, "phases") == 1


def test_past_the_newest_builds_cap_only_what_teaches_estimates_stays(tmp_path: Path) -> None:
    with History(tmp_path / "history.sqlite") as history:
        history.record([_build(f"n{i}", 1 + i / 100, status="failed") for i in range(10)])
        history.record([_build("ok", 2)])
        pruned = history.prune_if_due(NOW, budget=60, builds=3)
        assert pruned is not None
        names = [b.pname for b in history.builds(limit=None)]
        # The 3 newest (a day old: within KEEP_DAYS), and the only success of 'ok', older.
        assert names == ["n0", "n1", "n2", "ok"]


def test_an_old_runs_survivors_are_listed_under_no_run(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    with History(path) as history:
        history.record_run(*_run("old-run", 100, ["once", "often"]))
        for day in range(5):
            history.record([_build("often", day + 1)])
        history.record_run(*_run("new-run", 1, ["other"]))
        history.prune_if_due(NOW, budget=60)
        assert [r.run_id for r in history.runs(limit=None)] == ["new-run"]
        assert history.runs(run_id="old") == []
        (survivor,) = history.builds(name="-once-", limit=None)
        assert (survivor.run_id, survivor.phases) == (PRUNED_RUN, ())
        assert history.builds(run_id="old-run", limit=None) == []
        assert "often" in history.durations(["often"])  # its five newer builds teach it
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT DISTINCT run_id FROM deps").fetchall() == [("new-run",)]


def test_only_the_newest_edges_of_the_hook_stay_whatever_their_age(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("offload.history.prune.KEEP_EDGES", 3)
    with History(tmp_path / "history.sqlite") as history:
        run, builds = _run("a-run", 200, ["r"])  # a run's edges go with the run, not by count
        history.record_run(run, builds)
        for i in range(5):
            build = _build(f"h{i}", 1)
            history.record([build], deps={build.drv_path: (_drv("in", i),)})
        pruned = history.prune_if_due(NOW, budget=60)
        assert pruned is not None
        assert (pruned.edges, pruned.runs) == (2 + 1, 1)
        assert history.recent_deps() == [(_drv(f"h{i}"), _drv("in", i)) for i in (4, 3, 2)]
        assert len(history.builds(limit=None)) == 6  # the builds stay: they are new or teach


def test_a_pass_runs_at_most_once_a_day_whoever_asks(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    with History(path) as history:
        assert history.prune_if_due(NOW, budget=60) is not None
        history.record([_build("late", 100, status="failed")])
    with History(path) as other:  # another process: the pass is recorded in the file
        assert other.prune_if_due(NOW + DAY / 2, budget=60) is None
        assert len(other.builds(limit=None)) == 1
        pruned = other.prune_if_due(NOW + DAY + 1, budget=60)
        assert pruned is not None
        assert pruned.builds == 1
        # A clock set back (the last pass "in the future") does not stop pruning for good.
        assert other.prune_if_due(NOW, budget=60) is not None


def test_a_new_file_gives_freed_pages_back(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    with History(path) as history:
        for i in range(2000):
            build = _build(f"p{i}", 100, status="failed")
            history.record([build], deps={build.drv_path: (_drv("in"),)})
        history.record_run(*_run("big", 100, [f"q{i}" for i in range(3000)]))
        with closing(sqlite3.connect(path)) as db:
            grown = db.execute("PRAGMA page_count").fetchone()[0]
            assert db.execute("PRAGMA auto_vacuum").fetchone() == (2,)  # incremental
        pruned = history.prune_if_due(NOW, budget=60)
        assert pruned is not None
        assert (pruned.builds, pruned.runs) == (2000, 1)
        with closing(sqlite3.connect(path)) as db:
            assert db.execute("PRAGMA page_count").fetchone()[0] < grown * 0.6
            assert db.execute("PRAGMA freelist_count").fetchone() == (0,)
        assert [b.run_id for b in history.builds(limit=None)] == [PRUNED_RUN] * 3000  # teach


def test_a_run_still_listed_keeps_every_build(tmp_path: Path) -> None:
    # It began before the cutoff and ended after it: whole runs go, or none of them.
    with History(tmp_path / "history.sqlite") as history:
        run, builds = _run("across", 89.9, ["x", "y"])
        early = BuildRecord("across", _drv("z"), "z", "m", NOW - 95 * DAY, NOW - 94 * DAY, "failed")
        history.record_run(run, [*builds, early])
        history.prune_if_due(NOW, budget=60)
        assert history.counts(["across"]) == {"across": {"built": 2, "failed": 1}}


def test_a_pass_cut_by_its_budget_is_taken_up_where_it_stopped(tmp_path: Path) -> None:
    with History(tmp_path / "history.sqlite") as history:
        for i in range(3 * BATCH):
            history.record([_build(f"n{i}", 100 + i / 1000, status="failed")])
        first = history.prune_if_due(NOW, budget=0.0)  # one step, then out of time
        assert first is not None
        assert not first.done
        passes = [first]
        while passes[-1].done is False:
            again = history.prune_if_due(NOW + 1, budget=0.0)  # due again at once
            assert again is not None
            passes.append(again)
        assert sum(p.builds for p in passes) == 3 * BATCH
        assert history.builds(limit=None) == []
        assert history.prune_if_due(NOW + 2, budget=60) is None  # done: not due for a day


def test_old_sqlite_variable_limits_are_kept(tmp_path: Path) -> None:
    # SQLite before 3.32 binds at most 999 parameters per statement (Debian 10, Ubuntu 20.04).
    with History(tmp_path / "history.sqlite") as history:
        history._db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
        history.record([_build(f"n{i}", 100, status="failed") for i in range(2 * BATCH + 7)])
        history.record_run(*_run("wide", 100, [f"w{i}" for i in range(1500)]))
        pruned = history.prune_if_due(NOW, budget=60)
        assert pruned is not None
        assert (pruned.builds, pruned.runs, pruned.done) == (2 * BATCH + 7, 1, True)


def test_reading_read_only_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    with closing(sqlite3.connect(path)) as db:  # as an older offload of schema 2 made it
        db.executescript(SCHEMA_2)
    before = path.read_bytes()
    with History(path, read_only=True) as history:
        assert history.builds(limit=None) == []
    assert path.read_bytes() == before
    with History(path) as history:  # written: the extras, never a new schema version
        history.prune_if_due(NOW, budget=60)
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (2,)


def test_a_pass_stopped_by_a_signal_is_due_again_soon_not_tomorrow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ctrl-C in a pass stops the command (cli.build_keep.forget_old); its claim, the pass's
    # start, held for a whole day, so nothing was forgotten until tomorrow's run.
    path = tmp_path / "history.sqlite"
    with History(path) as history:
        history.record([_build("old", 100, status="failed")])

        def stopped(*args: object, **kwargs: object) -> None:
            raise KeyboardInterrupt

        with monkeypatch.context() as patched:
            patched.setattr(db, "prune", stopped)
            with pytest.raises(KeyboardInterrupt):
                history.prune_if_due(NOW, budget=60)
    with History(path) as other:
        assert other.prune_if_due(NOW + 1, budget=60) is None  # claimed: not two at once
        pruned = other.prune_if_due(NOW + PRUNE_CLAIM, budget=60)
        assert pruned is not None
        assert pruned.builds == 1
        assert other.prune_if_due(NOW + PRUNE_CLAIM + 1, budget=60) is None  # done today


def test_a_reader_in_the_log_does_not_hold_up_a_pass(tmp_path: Path) -> None:
    # The pass's last checkpoint (TRUNCATE) waited for readers under the busy timeout, holding
    # every writer's lock meanwhile: a pass of budget 0.3 s took 30 s, another run's records
    # waited 28 s. It now cuts the log only when no reader is in it.
    path = tmp_path / "history.sqlite"
    with History(path, wait=60.0) as history:
        for i in range(200):
            history.record([_build(f"p{i}", 100, status="failed")])
        with closing(sqlite3.connect(path)) as reader:
            reader.execute("BEGIN")
            reader.execute("SELECT COUNT(*) FROM builds").fetchone()  # a read transaction
            started = time.monotonic()
            pruned = history.prune_if_due(NOW, budget=60)
            took = time.monotonic() - started
            reader.rollback()
        assert pruned is not None
        assert pruned.builds == 200
        assert took < 30.0, f"the pass waited {took:.1f} s for the reader (busy timeout 60 s)"
        with closing(sqlite3.connect(path)) as db:
            assert db.execute("SELECT COUNT(*) FROM builds").fetchone() == (0,)
        history.record([_build("after", 1)])  # its own busy timeout is back: it writes
