"""A hash of the policy's decisions over many random simulations, to show a change keeps them.

Run it on the code before and after a change (``PYTHONPATH`` names the ``src`` of each) and
compare the last line: equal hashes mean every simulation gave the same schedule, makespan,
failures, skips, speculations and cancellations. The cases cycle through plain runs, transfers
(``BandwidthTransferCost``), machine failures, failing builds, first runs (every estimate a
guess, learnt within the run) and holds and speculation switched or tuned. Each case's own hash
is printed too, so a difference can be traced to its case number (``k % 6`` is the kind).

    PYTHONPATH=src python bench/plan_fingerprint.py 300

With ``--moves`` every case plans with input moves instead, as ``offload build`` does
(``bench.plan_moves.SimulatedMoves``; the bandwidth cases' transfers are replaced too): the
placement path that scores machines by the inputs they hold, which the plain cases never take.

    PYTHONPATH=src python bench/plan_fingerprint.py 300 --moves
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if __package__ in {None, ""}:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.plan_moves import SimulatedMoves
from offload.errors import OffloadError
from offload.scheduler.dag import Job
from offload.scheduler.generated import layered_jobs, random_machines
from offload.scheduler.policy import BandwidthTransferCost, MachineSlotSpec, SpeculationRule
from offload.scheduler.policy.guesses import Guesses, guessed_work
from offload.scheduler.simulate import simulate

Case = tuple[int, list[Job], list[MachineSlotSpec], dict[str, Any]]


def cases(count: int, *, moves: bool = False) -> Iterator[Case]:
    """``count`` random simulations: (number, jobs, machines, simulate's keyword arguments);
    ``moves``: each plans with input moves (module docstring)."""
    for k in range(count):
        rng = random.Random(k)
        jobs = layered_jobs(
            rng.choice([20, 60, 200, 600, 1500]),
            k,
            feature_share=rng.choice([0, 0.1, 0.3]),
            width=rng.choice([None, 3, 10, 40]),
            max_deps=rng.choice([1, 2, 3, 5]),
        )
        machines = random_machines(rng.choice([1, 2, 4, 10, 30]), k)
        kw: dict[str, Any] = {"noise": rng.choice([0, 0.1, 0.3, 0.6]), "seed": k, "strict": False}
        mode = k % 6
        if mode == 1:
            sizes = {j.id: rng.randint(0, 10**8) for j in jobs}
            links = {m.name: rng.choice([1e6, 1e7, 1e8]) for m in machines}
            kw["transfer"] = BandwidthTransferCost(sizes, links, latency=0.1)
        elif mode == 2:
            kw["machine_failures"] = [
                (rng.uniform(0, 200), rng.choice(machines).name) for _ in range(3)
            ]
        elif mode == 3:
            kw["failing"] = [j.id for j in rng.sample(jobs, min(3, len(jobs)))]
        elif mode == 4:
            actual = {j.id: j.work_estimate for j in jobs}
            factors = {j.id: rng.uniform(0.5, 2) for j in jobs}
            jobs = [
                dataclasses.replace(
                    j, work_estimate=guessed_work(j.required_features, factors[j.id])
                )
                for j in jobs
            ]
            kw = {
                "actual": actual,
                "guessed": list(actual),
                "guesses": Guesses.for_jobs(jobs, factors),
                "strict": False,
            }
        elif mode == 5:
            kw["hold"] = rng.random() < 0.5
            kw["speculation"] = SpeculationRule(
                min_gain=rng.choice([0.1, 1, 5]), min_ratio=rng.choice([0.05, 0.2, 0.5])
            )
            kw["speculate"] = rng.random() < 0.8
        if moves:
            kw["transfer"] = SimulatedMoves(jobs)
        yield k, jobs, machines, kw


def main(argv: list[str]) -> int:
    moves = "--moves" in argv
    counts = [arg for arg in argv if arg != "--moves"]
    total = hashlib.sha256()
    for k, jobs, machines, kw in cases(int(counts[0]) if counts else 300, moves=moves):
        try:
            res = simulate(jobs, machines, **kw)
            fields = (res.makespan, res.lower_bound, res.schedule, res.failed, res.skipped)
            text = repr((*fields, res.speculations, res.cancelled))
        except OffloadError as exc:
            text = "error " + repr(exc)
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        total.update(digest.encode())
        print(k, digest)
    print("ALL", total.hexdigest())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
