"""The process's own timeline: named wall-clock marks where each of a command's fixed costs ends.

A run of ``offload build`` spends time before its first build and after its last one: the
interpreter and imports ("imported"), reading the settings and machines ("settings"), evaluating
the roots ("evaluated", in a thread while the builders' sessions open), waiting for the builders
still connecting ("answered"), reading the graph ("graph"), taking what exists and planning
("planned"), and after the builds closing the sessions ("closed"). ``offload build --json``
reports the marks as one ``timing`` event (``ui.events.Timing``), so whoever measures a run can
split its wall time, from the outside start of the process to its exit, into these phases.

One process runs one command: the marks are the process's, a module-level list (``reset``
empties it, for tests). Times are ``time.time()``, as every event's.
"""

from __future__ import annotations

import time

__all__ = ["mark", "reset", "taken"]

_MARKS: list[tuple[str, float]] = []


def mark(name: str) -> None:
    """Note that the phase ending at ``name`` ended now (list appends are thread-safe)."""
    _MARKS.append((name, time.time()))


def taken() -> tuple[tuple[str, float], ...]:
    """Every mark so far, in the order they were taken."""
    return tuple(_MARKS)


def reset() -> None:
    _MARKS.clear()
