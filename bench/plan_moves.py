"""Planning as ``offload build`` plans: with its transfer model, ``InputMoves``.

``plan_cost`` (the ``planning`` section's time) runs the policy without transfer costs, where
the machines of one speed are placed together (``placement.place_by_tier``). ``offload build``
always gives the policy ``InputMoves`` (``MOVE_SECONDS`` per input job whose outputs a machine
lacks), which scores each eligible machine per placement (``placement.place_by_machine``).
``moves_cost`` times that path on the same generated graph and machines, with outputs held as
the executor's ``Holders`` records them: on the machine that built them, on each machine a
dependent was built on (its inputs were copied there), and home for the jobs nothing depends
on (the requested outputs).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence

from typing_extensions import override

from offload.names import LOCAL
from offload.scheduler.dag import Job
from offload.scheduler.generated import layered_jobs, random_machines
from offload.scheduler.run.plan import InputMoves
from offload.scheduler.simulate import simulate

__all__ = ["SimulatedMoves", "moves_cost"]


class SimulatedMoves(InputMoves):
    """``InputMoves`` over holders recorded as each simulated build ends."""

    def __init__(self, jobs: Sequence[Job]) -> None:
        self.where: dict[str, set[str]] = {}
        super().__init__(self.where)
        self._deps = {job.id: job.deps for job in jobs}
        needed = {dep for job in jobs for dep in job.deps}
        self._home = {job.id for job in jobs if job.id not in needed}

    @override
    def record_output(self, job_id: str, machine: str) -> None:
        self.where[job_id] = {machine, LOCAL} if job_id in self._home else {machine}
        for dep in self._deps[job_id]:
            if (held := self.where.get(dep)) is not None:
                held.add(machine)


def moves_cost(n_nodes: int, n_machines: int = 100, seed: int = 0, noise: float = 0.3) -> float:
    """Seconds to plan (simulate) ``plan_cost``'s graph with input moves; the holders' own
    set-up is counted, generating the input is not."""
    jobs = layered_jobs(n_nodes, seed, feature_share=0.1)
    machines = random_machines(n_machines, seed)
    gc.collect()
    began = time.perf_counter()
    simulate(jobs, machines, noise=noise, seed=seed, bound=False, transfer=SimulatedMoves(jobs))
    return time.perf_counter() - began
