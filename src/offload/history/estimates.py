"""Duration estimates from history: what the scheduler expects each build to take.

Estimates are in seconds on a machine of speed 1 ("work"), so one number serves every machine:
a build that took 8 s on a speed-4 builder is 32 s of work. Each name's estimate is the median
of its per-machine medians converted to work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from offload.history.db import History

__all__ = ["Estimator", "estimator"]

Estimator = Callable[[Iterable[str]], Mapping[str, float]]


def estimator(history: History, speeds: Mapping[str, float]) -> Estimator:
    def estimate(pnames: Iterable[str]) -> dict[str, float]:
        result: dict[str, float] = {}
        for pname, per_machine in history.durations(pnames).items():
            works = sorted(
                duration * speeds.get(machine, 1.0) for machine, duration in per_machine.items()
            )
            result[pname] = works[len(works) // 2]
        return result

    return estimate
