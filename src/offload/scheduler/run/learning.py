"""Learning estimates within a run, for jobs history does not know.

Their estimates are guesses (``DEFAULT_WORK`` times their ``size_factor``). Each one this run
builds is measured in work (seconds on a machine of speed 1, per unit of size factor); once the
median of those measurements differs from the current guess by ``LEARN_CHANGE``, the jobs still
waiting take it as their new guess (``Policy.on_estimate``). Big-parallel builds keep their own
guess and teach nothing.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping

from offload.scheduler.dag import JobState
from offload.scheduler.policy import Policy
from offload.scheduler.run.plan import DEFAULT_WORK, BuildPlan, size_factor
from offload.store.path import split_name_version

__all__ = ["LEARN_CHANGE", "LEARN_LIMIT", "Learning"]

# Jobs whose estimate is a guess take the median of what this run has built so far, once it
# differs from the guess by this much; beyond LEARN_LIMIT guessed jobs the update is skipped
# (each one revisits the job's ancestors).
LEARN_CHANGE = 0.25
LEARN_LIMIT = 5000


class Learning:
    def __init__(
        self, plan: BuildPlan, estimates: Mapping[str, float] | None, wall: Callable[[], float]
    ) -> None:
        self.wall = wall
        # Jobs history does not know: their estimates are guesses.
        known = estimates or {}
        self.unknown = {
            d for d in plan.order if split_name_version(plan.drvs[d].name)[0] not in known
        }
        # Jobs estimated by DEFAULT_WORK: they learn from this run's builds.
        self._guessed = {
            d for d in self.unknown if "big-parallel" not in plan.drvs[d].required_features
        }
        self._guess = DEFAULT_WORK
        # A guessed job's work is this run's guess times its size factor.
        self._factor = {d: size_factor(plan.source_bytes.get(d, 0)) for d in self._guessed}
        self._observed: list[float] = []

    def learn(
        self,
        drv_path: str,
        speed: float,
        build_seconds: float | None,
        started: float,
        policy: Policy,
    ) -> None:
        """Improve guessed estimates with what this run has measured (no history yet)."""
        if drv_path not in self._guessed:
            return
        self._guessed.discard(drv_path)
        seconds = build_seconds
        if seconds is None:
            seconds = max(0.0, self.wall() - started)
        self._observed.append(seconds * speed / self._factor[drv_path])
        median = statistics.median(self._observed)
        if abs(median - self._guess) <= LEARN_CHANGE * self._guess:
            return
        self._guess = median
        if len(self._guessed) > LEARN_LIMIT:
            return
        graph = policy.graph
        for job in self._guessed:
            if graph.state(job) in {JobState.PENDING, JobState.READY}:
                policy.on_estimate(job, median * self._factor[job])
