"""Many clients on shared builders: do turns keep a big client from starving small ones?

Each seed runs one CI client with a big random layered graph and laptops with small ones, all
at once on the fleet's three two-slot machines (speeds 4, 2, 1), in the clients' simulator
(``offload.scheduler.clients``) with builder-side slot counting, three ways: ``fifo`` (a freed
slot goes to the builds waiting there, first come first served), ``kept`` (offload's build
sessions keep their slot ``LINGER`` s for their client's next build, with no turns: how offload
behaved before turns) and ``turns`` (the same, but a session is reused only within ``TURN`` s of
its start, as now). It prints each client's makespan the three ways.

    PYTHONPATH=src python -m bench.clients_turns [--seeds 5] [--big 150] [--small 15] [--laptops 2]
"""

from __future__ import annotations

import argparse
import statistics

from offload.scheduler.clients import simulate_clients
from offload.scheduler.dag import Job
from offload.scheduler.generated import layered_jobs
from offload.scheduler.policy import MachineSlotSpec
from offload.transport.links.turns import LINGER, TURN

MACHINES = [
    MachineSlotSpec(name, speed, 2, systems=frozenset({"x86_64-linux"}))
    for name, speed in (("fast", 4.0), ("medium", 2.0), ("slow", 1.0))
]
# (linger, turn) of each way.
WAYS: dict[str, tuple[float, float | None]] = {
    "fifo": (0.0, None),
    "kept": (LINGER, None),
    "turns": (LINGER, TURN),
}


def makespans(graphs: list[list[Job]]) -> dict[str, tuple[float, ...]]:
    return {
        way: simulate_clients(
            graphs, MACHINES, counted=True, step=0.1, linger=linger, turn=turn
        ).makespans
        for way, (linger, turn) in WAYS.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--big", type=int, default=150)
    parser.add_argument("--small", type=int, default=15)
    parser.add_argument("--laptops", type=int, default=2)
    args = parser.parse_args()
    worst: dict[str, list[float]] = {way: [] for way in WAYS}
    big: dict[str, list[float]] = {way: [] for way in WAYS}
    for seed in range(args.seeds):
        work = (1.0, 20.0)
        graphs = [layered_jobs(args.big, seed, work_range=work, big_share=0.0)]
        graphs += [
            layered_jobs(args.small, seed * 100 + c, work_range=work, big_share=0.0)
            for c in range(1, args.laptops + 1)
        ]
        spans = makespans(graphs)
        for way, values in spans.items():
            worst[way].append(max(values[1:]))
            big[way].append(values[0])
            cells = " ".join(f"{v:6.1f}" for v in values)
            print(f"seed {seed} {way:5}: ci+laptops {cells}")
    for way, slowest in worst.items():
        print(
            f"{way:5}: mean makespan of the slowest laptop {statistics.fmean(slowest):.1f}, "
            f"of the CI {statistics.fmean(big[way]):.1f}"
        )


if __name__ == "__main__":
    main()
