"""Rows of the history database to records and back, and the pieces of its queries.

Below ``History``: plain functions over a connection or cursor, no transactions of their own.
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
            found.setdefault(build_id, []).append(PhaseRecord(phase, started, finished))
    return {build_id: tuple(phases) for build_id, phases in found.items()}


def build_row(row: tuple[Any, ...], phases: tuple[PhaseRecord, ...]) -> BuildRecord:
    _, run_id, drv_path, pname, machine, started, finished, status, sent, received = row[:10]
    name, error, speculative = row[10:]
    return BuildRecord(
        run_id,
        drv_path,
        pname,
        machine,
        started,
        finished,
        status,
        sent,
        received,
        name=name,
        error=error,
        speculative=bool(speculative),
        phases=phases,
    )


def run_row(row: tuple[Any, ...]) -> RunRecord:
    run_id, started, finished, asked, outcome, machines, estimate, bound = row
    return RunRecord(
        run_id=run_id,
        started=started,
        finished=finished,
        asked=tuple(json.loads(asked)),
        outcome=outcome,
        machines=tuple(
            MachineRecord(m["name"], float(m["speed"]), int(m["slots"]))
            for m in json.loads(machines)
        ),
        estimate=estimate,
        lower_bound=bound,
    )


def legacy_run(row: tuple[Any, ...]) -> RunRecord:
    run_id, started, finished, failures = row
    outcome = "failed" if failures else "ok"
    return RunRecord(run_id, started, finished, (), outcome, (), None, None)
