"""Medians and spreads over benchmark runs: what every part of the report is made of.

A run is one raw record of ``bench/run.py`` (``tool``, ``rep``, ``status``, ``wall_s``, ...).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Run", "Spread", "count_ok", "paired_ratios", "spread", "text", "walls"]

Run = Mapping[str, Any]


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float
    count: int

    def text(self, digits: int = 2, unit: str = "") -> str:
        med = f"{self.median:.{digits}f}{unit}"
        if self.count == 1 or math.isclose(self.low, self.high):
            return med
        return f"{med} ({self.low:.{digits}f}-{self.high:.{digits}f})"


def spread(values: Sequence[float]) -> Spread | None:
    """Median and min-max of ``values``; None when there are none."""
    if not values:
        return None
    return Spread(statistics.median(values), min(values), max(values), len(values))


def text(value: Spread | None, digits: int = 2, unit: str = "") -> str:
    return value.text(digits, unit) if value is not None else "-"


def walls(runs: Sequence[Run], tool: str) -> list[float]:
    """Wall seconds of ``tool``'s successful runs, in repetition order."""
    return [float(r["wall_s"]) for r in runs if r["tool"] == tool and r["status"] == "ok"]


def count_ok(runs: Sequence[Run], tool: str) -> tuple[int, int]:
    mine = [r for r in runs if r["tool"] == tool]
    return sum(1 for r in mine if r["status"] == "ok"), len(mine)


def paired_ratios(runs: Sequence[Run], numerator: str, denominator: str) -> list[float]:
    """numerator wall / denominator wall for each repetition where both succeeded."""
    by_rep: dict[tuple[Any, str], float] = {}
    for r in runs:
        if r["status"] == "ok" and r["tool"] in {numerator, denominator}:
            by_rep[(r["rep"], r["tool"])] = float(r["wall_s"])
    reps = sorted({rep for rep, _ in by_rep})
    return [
        by_rep[(rep, numerator)] / by_rep[(rep, denominator)]
        for rep in reps
        if (rep, numerator) in by_rep
        and (rep, denominator) in by_rep
        and by_rep[(rep, denominator)] > 0
    ]
