"""Generated inputs for tests and the planning benchmark, and the planning cost itself.

``layered_jobs`` draws a random layered DAG and ``random_machines`` a pool of machines of
speeds 1-4, both from a seed, so that a test or a benchmark gets the same input every time.
``plan_cost`` times a whole simulated run on such a graph: the scheduler's own cost, which the
benchmarks report for 1,000 to 50,000 nodes on 100 machines.
"""

from __future__ import annotations

import gc
import math
import random
import time
import tracemalloc
from typing import NamedTuple

from offload.scheduler.dag import Job
from offload.scheduler.policy import MachineSlotSpec
from offload.scheduler.simulate import simulate

__all__ = ["PlanCost", "layered_jobs", "plan_cost", "random_machines"]


def layered_jobs(
    n_nodes: int,
    seed: int,
    *,
    width: int | None = None,
    max_deps: int = 3,
    system: str = "x86_64-linux",
    feature_share: float = 0.0,
    feature: str = "big-parallel",
    work_range: tuple[float, float] = (1.0, 60.0),
    big_share: float = 0.02,
) -> list[Job]:
    """A random layered DAG: each node depends on 1..max_deps nodes of the two layers above.

    Work is log-uniform in ``work_range`` seconds, and a ``big_share`` of nodes are ten times
    larger.
    """
    low, high = work_range
    rng = random.Random(seed)  # noqa: S311 -- reproducible test input
    width = width or max(1, round(2 * math.sqrt(n_nodes)))
    jobs: list[Job] = []
    previous: list[str] = []
    before: list[str] = []
    index = 0
    while index < n_nodes:
        size = min(n_nodes - index, max(1, round(width * rng.uniform(0.5, 1.5))))
        pool = previous + before
        layer: list[str] = []
        for _ in range(size):
            name = f"n{index:06d}"
            index += 1
            deps: tuple[str, ...] = ()
            if pool:
                deps = tuple(sorted(set(rng.choices(pool, k=rng.randint(1, max_deps)))))
            work = math.exp(rng.uniform(math.log(low), math.log(high)))
            if rng.random() < big_share:
                work *= 10
            features = frozenset({feature}) if rng.random() < feature_share else frozenset()
            jobs.append(Job(name, round(work, 3), deps, system, features))
            layer.append(name)
        before, previous = previous, layer
    return jobs


def random_machines(
    n_machines: int, seed: int, *, system: str = "x86_64-linux", feature: str = "big-parallel"
) -> list[MachineSlotSpec]:
    """Machines of speed 1-4 with 1-4 slots; every other one supports ``feature``."""
    rng = random.Random(seed)  # noqa: S311 -- reproducible test input
    return [
        MachineSlotSpec(
            f"m{i:03d}",
            speed=float(rng.choice((1, 2, 3, 4))),
            slots=rng.randint(1, 4),
            systems=frozenset({system}),
            supported=frozenset({feature}) if i % 2 == 0 else frozenset(),
        )
        for i in range(n_machines)
    ]


class PlanCost(NamedTuple):
    seconds: float
    peak_bytes: int


def plan_cost(
    n_nodes: int, n_machines: int = 100, seed: int = 0, *, noise: float = 0.3
) -> PlanCost:
    """Wall time and peak traced memory of planning (simulating) a generated graph.

    The graph is a layered random one (10% of jobs need ``big-parallel``, which half the
    machines offer) with noisy durations so that holds and speculation are exercised. Time is
    measured on a run without tracing (tracemalloc slows Python down several times); memory on
    a second, traced run. Generating the input is not counted, nor is the lower bound (a real
    run computes none); building the graph is.
    """
    jobs = layered_jobs(n_nodes, seed, feature_share=0.1)
    machines = random_machines(n_machines, seed)
    gc.collect()
    began = time.perf_counter()
    simulate(jobs, machines, noise=noise, seed=seed, bound=False)
    seconds = time.perf_counter() - began
    gc.collect()
    tracemalloc.start()
    try:
        simulate(jobs, machines, noise=noise, seed=seed, bound=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return PlanCost(seconds, peak)
