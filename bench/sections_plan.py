"""The sections that build nothing: the scheduler's planning cost on 1,000-50,000 simulated nodes
(``planning``; also with input moves, as ``offload build`` plans: ``plan_moves``), and
``offload simulate``'s cost under both policies (``simulate``).
"""

from __future__ import annotations

from typing import Any

from bench.context import Options, Save, log
from bench.plan_moves import moves_cost
from bench.report_model import simulate_section
from offload.errors import OffloadError

PLAN_SIZES = (1_000, 10_000, 50_000)
QUICK_PLAN_SIZES = (1_000,)


def planning_section(opts: Options, save: Save) -> dict[str, Any]:
    section: dict[str, Any] = {
        "machines": 100,
        "function": "offload.scheduler.generated.plan_cost",
        "runs": [],
    }
    sizes = QUICK_PLAN_SIZES if opts.quick else PLAN_SIZES
    for nodes in sizes:
        log(f"planning {nodes} nodes on 100 simulated machines")
        try:
            from offload.scheduler.generated import plan_cost

            cost = plan_cost(nodes, 100, seed=0)
            moves = moves_cost(nodes, 100, seed=0)
        except (ImportError, OffloadError, ValueError) as exc:
            section["runs"].append({"nodes": nodes, "status": "failed", "error": str(exc)})
        else:
            section["runs"].append(
                {
                    "nodes": nodes,
                    "status": "ok",
                    "seconds": round(cost.seconds, 4),
                    "peak_bytes": cost.peak_bytes,
                    "input_moves_seconds": round(moves, 4),
                }
            )
            log(
                f"  -> {cost.seconds:.2f} s, {cost.peak_bytes / (1 << 20):.1f} MiB;"
                f" with input moves (as offload build plans) {moves:.2f} s"
            )
        save("planning", section)
    return section


def simulate_run(opts: Options, save: Save) -> dict[str, Any]:
    log("simulating 50,000 nodes on 200 machines under both policies")
    section = simulate_section(1_000 if opts.quick else 50_000)
    save("simulate", section)
    return section
