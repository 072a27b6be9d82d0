"""Many clients on shared builders: does moving a job off a full builder help?

Each seed draws 4 machines (``random_machines``) and 3 clients with a random layered graph
each (``layered_jobs``), and runs them at once in the clients' simulator
(``offload.scheduler.clients``) with builder-side slot counting, once with waiting builds left
where they are and once with clients moving them to a free slot elsewhere (``moving``). It
prints each client's makespan both ways, their mean and worst, and utilisation.

    PYTHONPATH=src python -m bench.clients_moving [--seeds 5] [--nodes 40] [--clients 3]
"""

from __future__ import annotations

import argparse
import statistics

from offload.scheduler.clients import ClientsResult, simulate_clients
from offload.scheduler.generated import layered_jobs, random_machines


def compare(seed: int, nodes: int, clients: int) -> tuple[ClientsResult, ClientsResult]:
    machines = random_machines(4, seed)
    graphs = [
        layered_jobs(nodes, seed * 100 + c, work_range=(1.0, 20.0), big_share=0.0)
        for c in range(clients)
    ]
    staying = simulate_clients(graphs, machines, counted=True, step=0.1)
    moving = simulate_clients(graphs, machines, counted=True, moving=True, step=0.1)
    return staying, moving


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=40)
    parser.add_argument("--clients", type=int, default=3)
    args = parser.parse_args()
    means: list[tuple[float, float]] = []
    for seed in range(args.seeds):
        staying, moving = compare(seed, args.nodes, args.clients)
        cells = "  ".join(
            f"{a:6.1f}->{b:6.1f}" for a, b in zip(staying.makespans, moving.makespans, strict=True)
        )
        mean = (statistics.fmean(staying.makespans), statistics.fmean(moving.makespans))
        means.append(mean)
        print(
            f"seed {seed}: per client {cells}  mean {mean[0]:.1f}->{mean[1]:.1f}"
            f"  worst {max(staying.makespans):.1f}->{max(moving.makespans):.1f}"
            f"  util {staying.utilisation:.2f}->{moving.utilisation:.2f}"
        )
    ratio = statistics.fmean(b / a for a, b in means)
    print(f"mean makespan with moving / without: {ratio:.3f}")


if __name__ == "__main__":
    main()
