"""The bench's section on `offload simulate`: how well both policies predict the measured runs
(bench/model_check.py) and what simulating 50,000 nodes on 200 machines costs (issue #16).

``simulate_section`` measures, ``model_lines`` renders both for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections.abc import Callable, Mapping
from typing import Any

from bench.model_check import COST_JITTER, DRAWS, JITTER, TARGET, Check, checks, nix_costs

SCALE_NODES = 50_000
SCALE_MACHINES = 200
SCALE_SECONDS = 30.0
SCALE_BYTES = 1 << 30
MIB = 1 << 20


def _cost(run: Callable[[], object]) -> dict[str, Any]:
    """Time of an untraced run, peak memory of a second one under tracemalloc."""
    gc.collect()
    began = time.perf_counter()
    run()
    seconds = time.perf_counter() - began
    gc.collect()
    tracemalloc.start()
    try:
        run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return {"seconds": round(seconds, 3), "peak_bytes": peak}


def simulate_section(nodes: int = SCALE_NODES, machines: int = SCALE_MACHINES) -> dict[str, Any]:
    from offload.scheduler.generated import layered_jobs, random_machines
    from offload.scheduler.nix_model import simulate_nix
    from offload.scheduler.simulate import simulate

    jobs = layered_jobs(nodes, 0, feature_share=0.1)
    pool = random_machines(machines, 0)
    runs = {
        "offload": lambda: simulate(jobs, pool, noise=0.3),
        "nix": lambda: simulate_nix(jobs, pool, noise=0.3),
    }
    return {
        "nodes": nodes,
        "machines": machines,
        "graph": "offload.scheduler.generated.layered_jobs(nodes, 0, feature_share=0.1), noise 0.3",
        "runs": [{"policy": policy, **_cost(run)} for policy, run in runs.items()],
    }


def model_lines(results: Mapping[str, Any]) -> list[str]:
    lines = ["", "## `offload simulate` against the measured runs", ""]
    if results.get("graphs") and results.get("overhead") and results.get("fleet"):
        costs = nix_costs(results)
        lines += [
            (
                "The bench graphs simulated on the bench fleet (`python bench/model_check.py`): "
                "`--policy nix` models Nix 2.8's hook, with its cost per accepted build taken "
                f"from this run's trivial derivations ({costs.accept:.3f} s); offload's plan gets "
                "this run's measured fixed cost (wall less scheduler time). Each prediction is the "
                f"median of {DRAWS} simulations with durations off by a few per cent "
                f"(log-normal sigma {JITTER}): both policies are greedy, and one exact simulation "
                f"is one draw. Target: within {TARGET:.0%} of the measured median; where the "
                f"measured runs themselves differ by more than {TARGET:.0%} (a split outcome: "
                "Nix's hook sent a long build to the slow member in some runs and not in others), "
                f"within {TARGET:.0%} of one of them, and the table shows the runs. Nix's "
                "draws also take its cost per accepted build off by a log-normal sigma "
                f"{COST_JITTER} (which slot a long build finds free depends on it); where those "
                f"draws differ by more than {TARGET:.0%}, a measured median within {TARGET:.0%} "
                "of one of them counts, and the table shows their range."
            ),
            "",
            "| graph | policy | measured s | simulated s | simulated / measured | within |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {c.shape} | {c.tool} | {c.measured_s:.1f} | {c.predicted_s:.1f} | "
            f"{c.ratio:.2f} | {_verdict(c)} |"
            for c in checks(results)
        ]
    scale = results.get("simulate")
    if scale:
        lines += [
            "",
            (
                f"Simulating {scale['nodes']:,} nodes on {scale['machines']} machines "
                f"({scale['graph']}); target < {SCALE_SECONDS:g} s and < 1 GiB each:"
            ),
            "",
            "| policy | time (s) | peak memory (MiB) | met |",
            "|---|---|---|---|",
        ]
        for run in scale["runs"]:
            met = run["seconds"] < SCALE_SECONDS and run["peak_bytes"] < SCALE_BYTES
            lines.append(
                f"| {run['policy']} | {run['seconds']:.2f} | {run['peak_bytes'] / MIB:.1f} | "
                f"{'yes' if met else 'NO'} |"
            )
    return lines


def _verdict(check: Check) -> str:
    if abs(check.ratio - 1) <= TARGET:
        return "yes"
    runs = ", ".join(f"{r:.1f}" for r in sorted(check.runs))
    verdict = "yes" if check.within else "NO"
    if check.split:
        return f"{verdict}: runs split ({runs} s)"
    if check.split_prediction:
        low, high = min(check.draws), max(check.draws)
        return f"{verdict}: simulated draws split ({low:.1f}-{high:.1f} s)"
    return "NO"
