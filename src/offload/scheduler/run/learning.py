"""Learning estimates within a run, for jobs history does not know.

Their estimates are guesses (``DEFAULT_WORK`` times their ``size_factor``); the model of how
a run's own builds improve them is ``offload.scheduler.policy.guesses.Guesses``. This module
measures each build in work (seconds at speed 1) and hands the new estimates to the policy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from offload.scheduler.dag import JobState
from offload.scheduler.policy import Policy
from offload.scheduler.policy.guesses import LEARN_CHANGE, LEARN_LIMIT, Guesses
from offload.scheduler.run.plan import BuildPlan, guessed_drvs, size_factor

__all__ = ["LEARN_CHANGE", "LEARN_LIMIT", "Learning"]


class Learning:
    def __init__(
        self, plan: BuildPlan, estimates: Mapping[str, float] | None, wall: Callable[[], float]
    ) -> None:
        self.wall = wall
        # Jobs history does not know: their estimates are guesses.
        self.unknown = guessed_drvs(plan, estimates)
        # Big-parallel and preferLocalBuild builds keep their own guess (``guesses``); the
        # others learn from this run's builds.
        self._guesses = Guesses(
            {
                d: size_factor(plan.source_bytes.get(d, 0))
                for d in self.unknown
                if "big-parallel" not in plan.drvs[d].required_features
                and not plan.drvs[d].prefer_local_build
            }
        )

    def learn(
        self,
        drv_path: str,
        speed: float,
        build_seconds: float | None,
        started: float,
        policy: Policy,
    ) -> None:
        """Improve guessed estimates with what this run has measured (no history yet)."""
        seconds = build_seconds
        if seconds is None:
            seconds = max(0.0, self.wall() - started)
        graph = policy.graph
        waiting = {JobState.PENDING, JobState.READY}
        works = self._guesses.observe(drv_path, seconds * speed)
        # At once: each job's own update walked its ancestors, a wide graph's root once per
        # job (a first run of 4,000 new names stalled for 80 s).
        policy.on_estimates({job: w for job, w in works.items() if graph.state(job) in waiting})
