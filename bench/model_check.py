"""How well `offload simulate` predicts a real `make bench` run, for both policies.

For every bench graph of a results file, the same DAG is generated again (bench/graphs.py is
reproducible) and simulated on the same fleet: Nix's hook with ``simulate_nix`` and offload's
scheduler with ``simulate``. Nothing is fitted to the graphs. The costs come from other parts
of the same run:

- Nix: the dispatcher's cost per accepted build is the trivial-derivation figure (100
  derivations with nothing to build at -j0, all on one builder that always had a free slot);
  the rest of the costs are ``NixCosts``' defaults.
- offload: the plan with exact durations, plus the run's measured fixed cost (its wall time
  less the time its scheduler ran, both in the results).

Both predictions add nothing for evaluation beyond that; the report gives predicted / measured
(medians of the measured reps) and says which graphs are outside the 15% target.

    python bench/model_check.py [bench/results/DATE.json] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.graphs import generate
from offload.names import LOCAL
from offload.scheduler.dag import Job
from offload.scheduler.nix_model import NixCosts, simulate_nix
from offload.scheduler.policy import MachineSlotSpec
from offload.scheduler.simulate import simulate

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 0.15
# Real runs jitter, and both policies are greedy: a build that ends a little earlier can send the
# next big one elsewhere. One exact simulation is one draw of that; the prediction is the
# median over runs whose durations are off by a few per cent (log-normal sigma 0.05).
JITTER = 0.05
DRAWS = 15
# Nix's hook is greedy about *when* too: which machine a long build goes to depends on which
# slots are free at its "try", so its makespan is chaotic in the per-build cost (huge at scale
# 4: 0.8x-1.2x of the measured cost gives 26-53 s). Each draw's cost per accepted build is off
# by a log-normal factor of sigma 0.1 as well (the measured one moves a few per cent from run
# to run, and more inside a busy graph than in the trivial-derivation figure).
COST_JITTER = 0.1


@dataclass(frozen=True, slots=True)
class Check:
    shape: str
    tool: str
    measured_s: float
    predicted_s: float
    runs: tuple[float, ...] = ()  # every measured wall time (the median is ``measured_s``)
    draws: tuple[float, ...] = ()  # every simulated makespan (the median is ``predicted_s``)

    @property
    def ratio(self) -> float:
        return self.predicted_s / self.measured_s

    @property
    def split(self) -> bool:
        """The measured runs differ from each other by more than the target: the outcome
        itself varies (Nix's hook sending a long build to the slow member or not), so a
        median of a few runs is no steadier than one of them."""
        return bool(self.runs) and max(self.runs) > (1 + TARGET) * min(self.runs)

    @property
    def split_prediction(self) -> bool:
        """The simulated draws differ by more than the target: the model says the outcome
        varies, and the median of its draws is no better a prediction than one of them."""
        return bool(self.draws) and max(self.draws) > (1 + TARGET) * min(self.draws)

    @property
    def within(self) -> bool:
        if abs(self.ratio - 1) <= TARGET:
            return True
        # A split outcome: the prediction must match one of the outcomes that happened, or
        # what happened one of the outcomes the model finds possible.
        if self.split and any(abs(self.predicted_s / r - 1) <= TARGET for r in self.runs):
            return True
        return self.split_prediction and any(
            abs(d / self.measured_s - 1) <= TARGET for d in self.draws
        )


def _machines(results: Mapping[str, Any]) -> list[MachineSlotSpec]:
    fleet = results["fleet"]
    local = fleet["local"]
    return [
        MachineSlotSpec(LOCAL, float(local["speed"]), int(local["slots"])),
        *(MachineSlotSpec(m["name"], float(m["speed"]), int(m["slots"])) for m in fleet["members"]),
    ]


def _walls(runs: Sequence[dict[str, Any]], tool: str) -> tuple[float, ...]:
    return tuple(r["wall_s"] for r in runs if r["tool"] == tool and r["status"] == "ok")


def _median_wall(runs: Sequence[dict[str, Any]], tool: str) -> float | None:
    walls = _walls(runs, tool)
    return statistics.median(walls) if walls else None


def _offload_fixed_cost(runs: Sequence[dict[str, Any]]) -> float:
    """Wall time outside the scheduler's run: start-up, evaluation, planning, teardown."""
    gaps = [
        r["wall_s"] - r["run_s"]
        for r in runs
        if r["tool"] == "offload" and r["status"] == "ok" and r["run_s"] is not None
    ]
    return statistics.median(gaps) if gaps else 0.0


def nix_costs(results: Mapping[str, Any]) -> NixCosts:
    overhead = results["overhead"]
    wall = _median_wall(overhead["runs"], "nix")
    if wall is None:
        return NixCosts.measured()
    return replace(NixCosts.measured(), accept=wall / overhead["derivations"])


def _nix_draw(
    jobs: Sequence[Job], machines: Sequence[MachineSlotSpec], costs: NixCosts, seed: int
) -> float:
    """One simulated makespan of Nix's hook: durations and the cost per accepted build off by
    a little (``JITTER``, ``COST_JITTER``), each draw its own seed."""
    accept = costs.accept * random.Random(seed).lognormvariate(0.0, COST_JITTER)
    drawn = replace(costs, accept=accept)
    return simulate_nix(jobs, machines, drawn, noise=JITTER, seed=seed).makespan


def checks(results: Mapping[str, Any]) -> list[Check]:
    machines = _machines(results)
    costs = nix_costs(results)
    found = []
    for graph in results["graphs"]:
        dag = generate(graph["shape"], graph["nodes"], graph["seed"], scale=graph["scale"])
        jobs = [Job(n.name, n.work, n.deps) for n in dag.nodes]
        runs = graph["runs"]
        if nix_walls := _walls(runs, "nix"):
            draws = tuple(_nix_draw(jobs, machines, costs, seed) for seed in range(DRAWS))
            found.append(
                Check(
                    graph["shape"], "nix", statistics.median(nix_walls),
                    statistics.median(draws), nix_walls, draws,
                )
            )  # fmt: skip
        if offload_walls := _walls(runs, "offload"):
            planned = statistics.median(
                simulate(jobs, machines, noise=JITTER, seed=seed).makespan for seed in range(DRAWS)
            )
            predicted = planned + _offload_fixed_cost(runs)
            found.append(
                Check(
                    graph["shape"], "offload", statistics.median(offload_walls), predicted,
                    offload_walls,
                )
            )  # fmt: skip
    return found


def report(found: Sequence[Check], source: Path, costs: NixCosts) -> str:
    lines = [
        (
            f"Model check against {source.name} (Nix accept cost {costs.accept:.3f} s from its "
            "trivial-derivation run)"
        ),
        "",
        "| graph | policy | measured s | simulated s | simulated / measured | within 15% |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {c.shape} | {c.tool} | {c.measured_s:.1f} | {c.predicted_s:.1f} | {c.ratio:.2f} "
        f"| {'yes' if c.within else 'NO'} |"
        for c in found
    ]
    return "\n".join(lines) + "\n"


def latest_results() -> Path:
    candidates = sorted(p for p in RESULTS.glob("*.json") if "partial" not in p.name)
    full = [p for p in candidates if "graphs" in json.loads(p.read_text())]
    if not full:
        raise SystemExit("no bench results with graphs under bench/results")
    return full[-1]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", type=Path, help="a make bench results file")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    source = args.results or latest_results()
    results = json.loads(source.read_text())
    found = checks(results)
    if args.json:
        print(json.dumps([{**c.__dict__, "ratio": c.ratio} for c in found], default=str))
    else:
        print(report(found, source, nix_costs(results)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
