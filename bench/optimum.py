"""The yardstick: a near-optimal makespan for a job graph on a pool, from an exact solver.

The model is the lower bound's (``offload.scheduler.simulate.lower_bound``, with
``bench/window_bound.py``'s as the makespan's floor too) made exact: each job
runs once, on one machine that can build it (Nix's matching rule: system and features), for
``work / speed`` seconds, in one of the machine's slots, after every job it depends on; moving
outputs costs nothing; with ``cost``, every build takes that many seconds more (``bench/fresh.py``:
Nix's own cost of a build, which any tool that builds with Nix pays). OR-tools CP-SAT minimises
the makespan: each job is one optional interval per eligible machine (exactly one present), each
machine a cumulative resource of ``slots``, times in whole milliseconds, every duration rounded
down. Rounded down, every schedule of the exact durations fits the model (each start rounded
down too), so the bound the solver proves is a bound on the exact problem; its schedule is then
timed again with the exact durations, so the makespan it gives is one a schedule reaches.

The answer is two numbers, never one called "the optimum" unless they meet: ``makespan``, the
best schedule found (the solver's, or the hint's, offload's own plan, when that is shorter or the
solver found none), which the optimum does not exceed; and ``bound``, what no schedule beats. A
ratio to ``makespan`` may flatter, one to ``bound`` may not: ``bench/verdicts.py`` judges a
target on both. When the solver finds nothing in time and there is no hint (or OR-tools is not
installed: it is the optional ``bench`` extra, never a runtime dependency), ``makespan`` is the
lower bound, marked ``solved=False``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from bench.window_bound import window_bound
from offload.scheduler.dag import Job, JobGraph
from offload.scheduler.policy import MachineSlotSpec, can_build
from offload.scheduler.simulate import lower_bound

if TYPE_CHECKING:
    from ortools.sat.python import cp_model

__all__ = ["Optimum", "optimum"]

T = TypeVar("T", int, float)

# Solver time unit: milliseconds (rounding each duration down moves a makespan by far under 1%).
_UNIT = 1000


@dataclass(frozen=True, slots=True)
class Optimum:
    """The best makespan found (seconds), the best proven bound, and whether it solved."""

    makespan: float
    bound: float
    solved: bool  # False: none in time (or no solver); makespan: the hint's, or the lower bound
    status: str

    @property
    def gap(self) -> float:
        """How much the makespan may exceed the optimum, as a share of it (0: proven)."""
        return (self.makespan - self.bound) / self.bound if self.bound > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "makespan": round(self.makespan, 4),
            "bound": round(self.bound, 4),
            "gap": round(self.gap, 5),
            "solved": self.solved,
            "status": self.status,
        }


def optimum(
    jobs: Sequence[Job],
    machines: Sequence[MachineSlotSpec],
    *,
    seconds: float = 10.0,
    hint: Mapping[str, tuple[str, float]] | None = None,
    workers: int = 2,
    cost: float = 0.0,
) -> Optimum:
    """The near-optimal makespan of ``jobs`` (exact work, plus ``cost`` seconds per build) on
    ``machines``; ``hint`` maps a job to (machine, start) from a known schedule, as the
    solver's first solution."""
    bound = max(lower_bound(JobGraph(jobs), machines), window_bound(jobs, machines, cost))
    try:
        from ortools.sat.python import cp_model
    except ImportError:
        return _unsolved(
            jobs, machines, bound, hint, status="no solver (pip install '.[bench]')", cost=cost
        )
    model = cp_model.CpModel()
    usable = [m for m in machines if m.slots > 0]
    serial = sum(j.work_estimate for j in jobs) / min(m.speed for m in usable) + cost * len(jobs)
    horizon = _UNIT * math.ceil(serial) + len(jobs) + 1
    start = {j.id: model.new_int_var(0, horizon, f"s{i}") for i, j in enumerate(jobs)}
    end = {j.id: model.new_int_var(0, horizon, f"e{i}") for i, j in enumerate(jobs)}
    exact = {(j.id, m.name): j.work_estimate / m.speed + cost for j in jobs for m in usable}
    sizes = {key: math.floor(_UNIT * duration) for key, duration in exact.items()}
    starts = _integer_schedule(jobs, usable, sizes, hint or {})
    hint = hint or {}
    per_machine, presence = _add_jobs(
        model, jobs, usable, sizes=sizes, bounds=(start, end), hint=hint, starts=starts
    )
    for m in usable:
        model.add_cumulative(per_machine[m.name], [1] * len(per_machine[m.name]), m.slots)
    makespan = model.new_int_var(math.floor(_UNIT * bound), horizon, "makespan")
    model.add_max_equality(makespan, list(end.values()))
    model.minimize(makespan)
    if starts:
        model.add_hint(makespan, max(starts[j.id] + sizes[j.id, hint[j.id][0]] for j in jobs))
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = seconds
    solver.parameters.num_workers = workers
    status = solver.solve(model)
    name = solver.status_name(status)
    if status not in {cp_model.OPTIMAL, cp_model.FEASIBLE}:
        return _unsolved(jobs, usable, bound, hint, status=name, cost=cost)
    found = _exact_makespan(
        solver, jobs, usable, variables=(start, presence), hint=hint, starts=starts, exact=exact
    )
    proven = max(bound, solver.best_objective_bound / _UNIT)
    return Optimum(found, min(proven, found), solved=True, status=name)


def _unsolved(
    jobs: Sequence[Job],
    machines: Sequence[MachineSlotSpec],
    bound: float,
    hint: Mapping[str, tuple[str, float]] | None,
    *,
    status: str,
    cost: float,
) -> Optimum:
    """No solution from the solver: the hint's schedule timed exactly, if there is one, against
    the lower bound; else the lower bound alone."""
    exact = {(j.id, m.name): j.work_estimate / m.speed + cost for j in jobs for m in machines}
    timed = _integer_schedule(jobs, machines, exact, hint or {})
    if not timed or hint is None:
        return Optimum(bound, bound, solved=False, status=status)
    found = max(timed[j.id] + exact[j.id, hint[j.id][0]] for j in jobs)
    return Optimum(found, min(bound, found), solved=False, status=f"{status}; the hint's schedule")


def _add_jobs(
    model: cp_model.CpModel,
    jobs: Sequence[Job],
    usable: Sequence[MachineSlotSpec],
    *,
    sizes: Mapping[tuple[str, str], int],
    bounds: tuple[Mapping[str, Any], Mapping[str, Any]],
    hint: Mapping[str, tuple[str, float]],
    starts: Mapping[str, int],
) -> tuple[dict[str, list[Any]], dict[tuple[str, str], Any]]:
    """Each job as one optional interval per machine that can build it, exactly one present,
    after its dependencies; the hint as the solver's first guess."""
    start, end = bounds
    per_machine: dict[str, list[Any]] = {m.name: [] for m in usable}
    presence: dict[tuple[str, str], Any] = {}
    for i, job in enumerate(jobs):
        chosen = []
        for m in usable:
            if not can_build(m, job.system, job.required_features):
                continue
            present = model.new_bool_var(f"p{i}_{m.name}")
            size = sizes[job.id, m.name]
            interval = model.new_optional_interval_var(
                start[job.id], size, end[job.id], present, f"i{i}_{m.name}"
            )
            per_machine[m.name].append(interval)
            presence[job.id, m.name] = present
            chosen.append(present)
            if job.id in hint:
                model.add_hint(present, hint[job.id][0] == m.name)
        model.add_exactly_one(chosen)
        if job.id in starts:
            model.add_hint(start[job.id], starts[job.id])
            model.add_hint(end[job.id], starts[job.id] + sizes[job.id, hint[job.id][0]])
        for dep in job.deps:
            model.add(start[job.id] >= end[dep])
    return per_machine, presence


def _exact_makespan(
    solver: cp_model.CpSolver,
    jobs: Sequence[Job],
    usable: Sequence[MachineSlotSpec],
    *,
    variables: tuple[Mapping[str, Any], Mapping[tuple[str, str], Any]],
    hint: Mapping[str, tuple[str, float]],
    starts: Mapping[str, int],
    exact: Mapping[tuple[str, str], float],
) -> float:
    """The solver's assignment and order, timed again with ``exact`` durations (no rounding)."""
    start, presence = variables
    placed = {
        j.id: (m.name, float(solver.value(start[j.id])))
        for j in jobs
        for m in usable
        if (j.id, m.name) in presence and solver.boolean_value(presence[j.id, m.name])
    }
    timed = _integer_schedule(jobs, usable, exact, placed)
    found = max(timed[j.id] + exact[j.id, placed[j.id][0]] for j in jobs)
    if starts:  # the hint itself, timed exactly, when the solver found nothing better
        again = _integer_schedule(jobs, usable, exact, hint)
        found = min(found, max(again[j.id] + exact[j.id, hint[j.id][0]] for j in jobs))
    return found


def _integer_schedule(
    jobs: Sequence[Job],
    machines: Sequence[MachineSlotSpec],
    sizes: Mapping[tuple[str, str], T],
    hint: Mapping[str, tuple[str, float]],
) -> dict[str, T]:
    """A schedule made feasible for ``sizes`` (solver units or seconds): each job on its
    hinted machine, in the hinted order of starts, as early as its deps and a slot allow."""
    if len(hint) != len(jobs):
        return {}
    zero = next(iter(sizes.values())) * 0
    slots = {m.name: [zero] * m.slots for m in machines}
    by_id = {j.id: j for j in jobs}
    starts: dict[str, T] = {}
    ends: dict[str, T] = {}
    # Dependencies first among equal starts: a job of no length starts as its dependent does.
    place = {job_id: i for i, job_id in enumerate(JobGraph(jobs).topological_order())}
    for job_id in sorted(hint, key=lambda j: (hint[j][1], place[j])):
        machine = hint[job_id][0]
        ready = max((ends[d] for d in by_id[job_id].deps), default=zero)
        if sizes[job_id, machine] == zero:
            # As in the solver's model, a job of no length holds no slot: it ends as it starts.
            starts[job_id] = ends[job_id] = ready
            continue
        free = slots[machine]
        slot = min(range(len(free)), key=free.__getitem__)
        starts[job_id] = max(ready, free[slot])
        ends[job_id] = free[slot] = starts[job_id] + sizes[job_id, machine]
    return starts
