"""Rows of the history database to records and back, and the pieces of its queries.

Below ``History``: plain functions over a connection or cursor, no transactions of their own.
A value a record cannot hold (a time that is no number or past any calendar, a byte count
that is text, a speed of 1e999: a file edited or damaged) is a ``ValueError``, which
``History`` says is a damaged database, as it says of rows that are not JSON.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from offload.history.records import BuildRecord, MachineRecord, PhaseRecord, RunRecord

__all__ = [
    "build_row",
    "chunks",
    "insert_builds",
    "legacy_run",
    "like_escape",
    "phases_of",
    "run_row",
]

_T = TypeVar("_T")
# Times are wall-clock seconds: a time past year 9999 is none Python's calendar can show.
_LATEST = 253402300799.0


def _time(value: Any, what: str) -> float:  # noqa: ANN401 - whatever the column holds
    """``value``, a time of the database's: a number within the calendar."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (0.0 <= value <= _LATEST)
    ):
        raise ValueError(f"{what} is {str(value)[:40]!r}, not a time")
    return float(value) if isinstance(value, float) else value


def _count(value: Any, what: str) -> int:  # noqa: ANN401 - whatever the column holds
    """``value``, a count of the database's (bytes, slots): a whole number, not negative."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} is {str(value)[:40]!r}, not a count")
    return value


def chunks(values: list[_T]) -> Iterator[tuple[list[_T], str]]:
    """Pieces of ``values`` small enough for one query, each with its "?" placeholders."""
    for start in range(0, len(values), 500):
        chunk = values[start : start + 500]
        yield chunk, ",".join("?" * len(chunk))


def like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def insert_builds(db: sqlite3.Connection, records: Iterable[BuildRecord]) -> None:
    for r in records:
        cur = db.execute(
            "INSERT INTO builds (run_id, drv_path, pname, machine, started, finished, status,"
            " bytes_sent, bytes_received, name, error, speculative)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                r.run_id,
                r.drv_path,
                r.pname,
                r.machine,
                r.started,
                r.finished,
                r.status,
                r.bytes_sent,
                r.bytes_received,
                r.name,
                r.error,
                int(r.speculative),
            ),
        )
        db.executemany(
            "INSERT INTO phases (build_id, phase, started, finished) VALUES (?, ?, ?, ?)",
            [(cur.lastrowid, p.phase, p.started, p.finished) for p in r.phases],
        )


def phases_of(cur: sqlite3.Cursor, ids: list[int]) -> dict[int, tuple[PhaseRecord, ...]]:
    found: dict[int, list[PhaseRecord]] = {}
    for chunk, marks in chunks(ids):
        for build_id, phase, started, finished in cur.execute(
            "SELECT build_id, phase, started, finished FROM phases"  # noqa: S608 (only "?"s)
            f" WHERE build_id IN ({marks}) ORDER BY started, rowid",
            chunk,
        ):
            record = PhaseRecord(
                phase, _time(started, "a phase's start"), _time(finished, "a phase's end")
            )
            found.setdefault(build_id, []).append(record)
    return {build_id: tuple(phases) for build_id, phases in found.items()}


def build_row(row: tuple[Any, ...], phases: tuple[PhaseRecord, ...]) -> BuildRecord:
    _, run_id, drv_path, pname, machine, started, finished, status, sent, received = row[:10]
    name, error, speculative = row[10:]
    return BuildRecord(
        run_id,
        drv_path,
        pname,
        machine,
        _time(started, "a build's start"),
        _time(finished, "a build's end"),
        status,
        _count(sent, "a build's bytes sent"),
        _count(received, "a build's bytes received"),
        name=name,
        error=error,
        speculative=bool(speculative),
        phases=phases,
    )


def run_row(row: tuple[Any, ...]) -> RunRecord:
    run_id, started, finished, asked, outcome, machines, estimate, bound = row
    return RunRecord(
        run_id=run_id,
        started=_time(started, "a run's start"),
        finished=_time(finished, "a run's end"),
        asked=tuple(json.loads(asked)),
        outcome=outcome,
        machines=tuple(_machine(m) for m in json.loads(machines)),
        estimate=estimate,
        lower_bound=bound,
    )


def _machine(said: dict[str, Any]) -> MachineRecord:
    speed = float(said["speed"])
    if not 0.0 < speed < float("inf"):
        raise ValueError(f"a machine's speed is {said['speed']!r}")
    return MachineRecord(said["name"], speed, _count(int(said["slots"]), "a machine's slots"))


def legacy_run(row: tuple[Any, ...]) -> RunRecord:
    run_id, started, finished, failures = row
    outcome = "failed" if failures else "ok"
    start, end = _time(started, "a run's start"), _time(finished, "a run's end")
    return RunRecord(run_id, start, end, (), outcome, (), None, None)
