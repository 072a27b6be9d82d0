"""A target "at most X times the optimum", judged where the optimum is known only within a gap.

The solver (``bench/optimum.py``) gives two numbers per graph: the best schedule found, which
the optimum does not exceed, and a proven bound, which it is not below. A run's ratio to the
optimum lies between its ratio to the schedule found and its ratio to the bound, and so does any
order statistic of many such ratios (a median, a p90): each ratio is monotone in its yardstick.
So a target is

- ``met`` when the statistic against the bound is within it (the optimum can only be larger);
- ``NOT met`` when the statistic against the schedule found exceeds it;
- ``undecided`` otherwise: the solver's gap straddles the target.

Pure functions over plain numbers, shared by the real-fleet and the simulated sections.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["MET", "NOT_MET", "UNDECIDED", "Judged", "judge", "p90"]

MET, NOT_MET, UNDECIDED = "met", "NOT met", "undecided"


@dataclass(frozen=True, slots=True)
class Judged:
    """A statistic of ratios to the schedule found and to the bound, and its verdict."""

    found: float  # against the best schedule found: at most the ratio to the optimum
    bound: float  # against the proven bound: at least the ratio to the optimum
    verdict: str

    def text(self, digits: int = 3, unit: str = "") -> str:
        """The ratio to the schedule found, and to the bound where that differs."""
        found = f"{self.found:.{digits}f}{unit}"
        if round(self.bound, digits) == round(self.found, digits):
            return found
        return f"{found} (bound {self.bound:.{digits}f}{unit})"


def judge(
    values: Sequence[tuple[float, float, float]],
    most: float,
    statistic: Callable[[Sequence[float]], float],
) -> Judged:
    """``statistic`` of each (measured, found, bound) triple's ratios, against ``most``."""
    if not values:
        raise ValueError("no values to judge")
    found = statistic([measured / best for measured, best, _ in values])
    bound = statistic([measured / low for measured, _, low in values])
    if bound <= most:
        verdict = MET
    elif found > most:
        verdict = NOT_MET
    else:
        verdict = UNDECIDED
    return Judged(found, bound, verdict)


def p90(values: Sequence[float]) -> float:
    """The 90th percentile by nearest rank: the smallest value at least 90% of values are not
    above (of 30 values, the 27th smallest)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
