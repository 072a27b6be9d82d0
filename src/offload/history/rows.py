"""Rows of the history database to records and back, and the pieces of its queries.

Below ``History``: plain functions over a connection or cursor, no transactions of their own.
A value a record cannot hold (a time that is no number or past any calendar, a byte count
that is text, a speed of 1e999, a name that is a number: a file edited or damaged) is a
``ValueError`` or ``TypeError``, which ``History`` says is a damaged database, as it says of
rows that are not JSON; checked here, while the read is guarded, not later where a command
formats what it read.
"""

from __future__ import annotations

import json
import math
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
    "machine_row",
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


def _text(value: Any, what: str) -> str:  # noqa: ANN401 - whatever the column holds
    """``value``, a text column's: a str (SQLite keeps whatever it was given)."""
    if not isinstance(value, str):
        raise TypeError(f"{what} is {str(value)[:40]!r}, not text")
    return value


def _maybe_text(value: Any, what: str) -> str | None:  # noqa: ANN401 - whatever it holds
    return None if value is None else _text(value, what)


def _seconds(value: Any, what: str) -> float | None:  # noqa: ANN401 - whatever it holds
    """``value``, a duration column's (an estimate, a bound): a finite number, or none."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} is {str(value)[:40]!r}, not a number of seconds")
    return float(value)


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
        _text(run_id, "a build's run"),
        _text(drv_path, "a build's derivation"),
        _text(pname, "a build's name"),
        _text(machine, "a build's machine"),
        _time(started, "a build's start"),
        _time(finished, "a build's end"),
        _text(status, "a build's status"),
        _count(sent, "a build's bytes sent"),
        _count(received, "a build's bytes received"),
        name=_text(name, "a build's full name"),
        error=_maybe_text(error, "a build's error"),
        speculative=bool(speculative),
        phases=phases,
    )


def run_row(row: tuple[Any, ...]) -> RunRecord:
    run_id, started, finished, asked, outcome, machines, estimate, bound = row
    listed = json.loads(_text(machines, "a run's machines"))
    if not isinstance(listed, list):
        raise TypeError(f"a run's machines are {machines[:40]!r}, not a list")
    return RunRecord(
        run_id=_text(run_id, "a run's id"),
        started=_time(started, "a run's start"),
        finished=_time(finished, "a run's end"),
        asked=tuple(_text(a, "a name asked") for a in json.loads(_text(asked, "a run's ask"))),
        outcome=_text(outcome, "a run's outcome"),
        machines=tuple(_machine(m) for m in listed),
        estimate=_seconds(estimate, "a run's estimate"),
        lower_bound=_seconds(bound, "a run's lower bound"),
    )


def _machine(said: Any) -> MachineRecord:  # noqa: ANN401 - whatever the JSON holds
    if not isinstance(said, dict):
        raise TypeError(f"a run's machine is {str(said)[:40]!r}")
    speed = float(said["speed"])
    if not 0.0 < speed < float("inf"):
        raise ValueError(f"a machine's speed is {said['speed']!r}")
    name = _text(said["name"], "a machine's name")
    events = said.get("said", [])  # none where an older offload kept the run
    if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
        raise TypeError(f"what a run said of machine {name!r} is {str(events)[:40]!r}")
    slots = _count(int(said["slots"]), "a machine's slots")
    return MachineRecord(name, speed, slots, tuple(events), said.get("usable") is not False)


def machine_row(machine: MachineRecord) -> dict[str, object]:
    """A run's machine as its row keeps it (``_machine`` reads it): what was said of it, and
    that it was not usable, only where so (an older offload reads the rest as before)."""
    kept: dict[str, object] = {"name": machine.name, "speed": machine.speed, "slots": machine.slots}
    if machine.said:
        kept["said"] = list(machine.said)
    if not machine.usable:
        kept["usable"] = False
    return kept


def legacy_run(row: tuple[Any, ...]) -> RunRecord:
    run_id, started, finished, failures = row
    outcome = "failed" if failures else "ok"
    start, end = _time(started, "a run's start"), _time(finished, "a run's end")
    return RunRecord(run_id, start, end, (), outcome, (), None, None)
