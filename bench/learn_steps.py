"""A run's learning step: every waiting guess changed at once, on a wide graph.

A first run learns what its guesses were worth from the builds it measured, and changes every
waiting job's estimate whenever what it learnt moves (``scheduler.run.learning``). On a wide
graph (one root, n leaves on it, one top over them all: a mass rebuild over stdenv) each leaf's
own update worked the root's critical path out again, a max over its n dependents: quadratic.
This times one step, the leaves updated one by one and at once (``JobGraph.update_estimates``).

    PYTHONPATH=src python -m bench.learn_steps [--sizes 1000 2000 4000] [--steps 3]
"""

from __future__ import annotations

import argparse
import time

from offload.scheduler.dag import Job, JobGraph


def _graph(n: int) -> tuple[JobGraph, list[Job]]:
    leaves = [Job(f"leaf{i}", 10.0, ("root",)) for i in range(n)]
    top = Job("all", 1.0, tuple(job.id for job in leaves))
    return JobGraph([Job("root", 1.0, ()), *leaves, top]), leaves


def step_seconds(n: int, steps: int, *, at_once: bool) -> float:
    """Seconds per learning step over a wide graph of ``n`` leaves."""
    graph, leaves = _graph(n)
    start = time.perf_counter()
    for step in range(steps):
        works = {job.id: 2.0 + step for job in leaves}
        if at_once:
            graph.update_estimates(works)
        else:
            for job_id, work in works.items():
                graph.update_estimate(job_id, work)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000])
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    for n in args.sizes:
        one = step_seconds(n, args.steps, at_once=False)
        both = step_seconds(n, args.steps, at_once=True)
        print(f"wide {n}: one by one {one * 1000:.1f} ms, at once {both * 1000:.1f} ms a step")


if __name__ == "__main__":
    main()
