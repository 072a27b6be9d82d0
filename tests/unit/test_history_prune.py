"""What the history forgets (``offload.history.prune``), on real SQLite files in tmp_path."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from offload.history.db import History
from offload.history.prune import KEEP_PER_NAME, PRUNED_RUN
from offload.history.records import BuildRecord, MachineRecord, PhaseRecord, RunRecord

NOW = 1_800_000_000.0
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
        pruned = history.prune_if_due(NOW)
        assert pruned is not None
        assert pruned.builds == 8 - KEEP_PER_NAME + 1
        kept = history.builds(limit=None)
        assert sorted(b.pname for b in kept) == ["fresh"] + ["rare"] * KEEP_PER_NAME
        # The survivors are the newest of their name: what estimates are learned from.
        assert min(b.finished for b in kept if b.pname == "rare") == NOW - 197 * DAY
        assert history.durations(["rare", "fresh"]) == before
    assert _rows(path, "phases") == KEEP_PER_NAME + 1  # the forgotten builds' phases went too


def test_past_the_newest_builds_cap_only_what_teaches_estimates_stays(tmp_path: Path) -> None:
    with History(tmp_path / "history.sqlite") as history:
        history.record([_build(f"n{i}", 1 + i / 100, status="failed") for i in range(10)])
        history.record([_build("ok", 2)])
        pruned = history.prune_if_due(NOW, builds=3)
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
        history.prune_if_due(NOW)
        assert [r.run_id for r in history.runs(limit=None)] == ["new-run"]
        assert history.runs(run_id="old") == []
        (survivor,) = history.builds(name="-once-", limit=None)
        assert (survivor.run_id, survivor.phases) == (PRUNED_RUN, ())
        assert history.builds(run_id="old-run", limit=None) == []
        assert "often" in history.durations(["often"])  # its five newer builds teach it
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT DISTINCT run_id FROM deps").fetchall() == [("new-run",)]


def test_the_hooks_old_edges_go_even_where_the_build_stays(tmp_path: Path) -> None:
    with History(tmp_path / "history.sqlite") as history:
        old, new = _build("a", 95), _build("b", 2)
        history.record([old], deps={old.drv_path: (_drv("x"),)})
        history.record([new], deps={new.drv_path: (_drv("y"),)})
        pruned = history.prune_if_due(NOW)
        assert pruned is not None
        assert pruned.edges == 1
        assert history.recent_deps() == [(new.drv_path, _drv("y"))]
        assert {b.pname for b in history.builds(limit=None)} == {"a", "b"}  # a teaches 'a'


def test_a_pass_runs_at_most_once_a_day_whoever_asks(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    with History(path) as history:
        assert history.prune_if_due(NOW) is not None
        history.record([_build("late", 100, status="failed")])
    with History(path) as other:  # another process: the pass is recorded in the file
        assert other.prune_if_due(NOW + DAY / 2) is None
        assert len(other.builds(limit=None)) == 1
        pruned = other.prune_if_due(NOW + DAY + 1)
        assert pruned is not None
        assert pruned.builds == 1
        # A clock set back (the last pass "in the future") does not stop pruning for good.
        assert other.prune_if_due(NOW) is not None


def test_a_new_file_gives_freed_pages_back(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    with History(path) as history:
        for i in range(2000):
            build = _build(f"p{i}", 100, status="failed")
            history.record([build], deps={build.drv_path: tuple(_drv("in", n) for n in range(40))})
        with closing(sqlite3.connect(path)) as db:
            grown = db.execute("PRAGMA page_count").fetchone()[0]
            assert db.execute("PRAGMA auto_vacuum").fetchone() == (2,)  # incremental
        history.prune_if_due(NOW)
        with closing(sqlite3.connect(path)) as db:
            assert db.execute("PRAGMA page_count").fetchone()[0] < grown / 4
        assert history.builds(limit=None) == []
