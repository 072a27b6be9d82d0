"""Guessed estimates: what a job without history is assumed to take, and learning within a run.

A build history does not know is guessed to take ``DEFAULT_WORK`` seconds at speed 1
(``BIG_PARALLEL_WORK`` when it requires ``big-parallel``: compilers and kernels are long, and a
long guess starts them first), times a size factor (from the size of its sources, 1 when
unknown). A ``preferLocalBuild`` derivation is guessed at ``TRIVIAL_WORK``: Nix's convention
marks builds cheaper to run than to copy (``writeText``, ``runCommandLocal``, ``buildEnv``).
``Guesses`` learns within the run: each guessed job that is built is measured in work per unit
of its size factor; once the median of those measurements differs from the current guess by
``LEARN_CHANGE``, the guessed jobs still waiting take it as their new estimate. Big-parallel
and preferLocalBuild builds keep their own guess and teach nothing: a configuration's dozens of
trivial builds, done first, would teach every real build that it takes a twentieth of a
second (simulated, docs/BENCHMARKS.md "Session 23"). The executor (``run/learning``) and the
simulator both drive this one model.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping

from offload.scheduler.dag import Job

__all__ = [
    "BIG_PARALLEL_WORK",
    "DEFAULT_WORK",
    "LEARN_CHANGE",
    "LEARN_LIMIT",
    "PREFER_LOCAL",
    "TRIVIAL_WORK",
    "Guesses",
    "guessed_work",
]

# Without history, a build is assumed to take this long on a machine of speed 1.
DEFAULT_WORK = 10.0
# big-parallel builds (compilers, kernels) are long; guess them long so they start first.
BIG_PARALLEL_WORK = 60.0
# preferLocalBuild builds are trivial by Nix's convention.
TRIVIAL_WORK = 1.0
# The feature only the local machine offers: the jobs of preferLocalBuild derivations it can
# build require it (``offload.scheduler.run.plan``).
PREFER_LOCAL = "offload-prefer-local"
# Guessed jobs take the median of what this run has built so far, once it differs from the
# guess by this much; beyond LEARN_LIMIT guessed jobs the update is skipped (each one revisits
# the job's ancestors).
LEARN_CHANGE = 0.25
LEARN_LIMIT = 5000
# Jobs that keep their own guess and teach nothing.
_OWN_GUESS = frozenset({"big-parallel", PREFER_LOCAL})


def guessed_work(
    required_features: Iterable[str], factor: float = 1.0, *, trivial: bool = False
) -> float:
    """The guess for a job history does not know, from its features and size factor;
    ``trivial``: its derivation has ``preferLocalBuild`` (as has a job requiring
    ``PREFER_LOCAL``), whatever its size."""
    features = frozenset(required_features)
    if trivial or PREFER_LOCAL in features:
        return TRIVIAL_WORK
    base = BIG_PARALLEL_WORK if "big-parallel" in features else DEFAULT_WORK
    return base * factor


class Guesses:
    """The guessed jobs that learn from this run's builds (``factors``: each one's size
    factor), and the run's current guess per unit of size factor."""

    def __init__(self, factors: Mapping[str, float], guess: float = DEFAULT_WORK) -> None:
        self._factor = dict(factors)
        self._waiting = set(self._factor)
        self._guess = guess
        self._observed: list[float] = []

    @classmethod
    def for_jobs(cls, jobs: Iterable[Job], factors: Mapping[str, float]) -> Guesses:
        """The learners among ``jobs`` (those in ``factors``): all but big-parallel and
        preferLocalBuild ones."""
        return cls(
            {
                j.id: factors[j.id]
                for j in jobs
                if j.id in factors and not j.required_features & _OWN_GUESS
            }
        )

    def observe(self, job_id: str, work: float) -> dict[str, float]:
        """``job_id`` was built in ``work`` (seconds at speed 1): the new estimates of the
        guessed jobs not built yet, or nothing when the guess stands."""
        if job_id not in self._waiting:
            return {}
        self._waiting.discard(job_id)
        self._observed.append(work / self._factor[job_id])
        median = statistics.median(self._observed)
        if abs(median - self._guess) <= LEARN_CHANGE * self._guess:
            return {}
        self._guess = median
        if len(self._waiting) > LEARN_LIMIT:
            return {}
        return {job: median * self._factor[job] for job in self._waiting}
