"""Duration estimates from history: what the scheduler expects each build to take.

Estimates are in seconds on a machine of speed 1 ("work"), so one number serves every machine:
a build that took 8 s on a speed-4 builder is 32 s of work. Each name's estimate is the median
of its per-machine medians converted to work.

A name history does not know may still be in Nix's own build logs (``NixLogs``, when given):
its time there is read as work at the fastest speed of ``speeds``, since a log does not say
where the build ran. Simulated first runs after Nix's hook built the same graph: read at the
fastest speed they were within 1.05x of a run with exact history at the median on every shape,
at speed 1 up to 1.40x at p90 on the skewed one (docs/BENCHMARKS.md "Estimates from Nix's
build logs").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from offload.history.db import History
from offload.history.nix_logs import NixLogs

__all__ = ["Estimator", "estimator"]

Estimator = Callable[[Iterable[str]], Mapping[str, float]]


def estimator(
    history: History, speeds: Mapping[str, float], logs: NixLogs | None = None
) -> Estimator:
    fastest = max(speeds.values(), default=1.0)

    def estimate(pnames: Iterable[str]) -> dict[str, float]:
        wanted = set(pnames)
        result: dict[str, float] = {}
        for pname, per_machine in history.durations(wanted).items():
            works = sorted(
                duration * speeds.get(machine, 1.0) for machine, duration in per_machine.items()
            )
            result[pname] = works[len(works) // 2]
        if logs is not None and (unknown := wanted - result.keys()):
            for pname, seconds in logs.durations(unknown).items():
                result[pname] = seconds * fastest
        return result

    return estimate
