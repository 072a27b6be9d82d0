"""Makespans under --keep-going with failing builds, to compare two versions of the policy.

For each shape of ``bench/graphs.py`` and each of ``--seeds`` seeds, a graph of ``--nodes``
nodes is simulated on the bench fleet of ``bench/seeds.py`` with a random ``--fail`` share of its
builds failing (drawn from the seed: the same builds fail in both versions, so the same builds
are skipped and only the order of the rest differs), ``strict=False`` as ``--keep-going`` asks.
Conditions: ``history`` (exact estimates) and ``noisy`` (estimates off by a log-normal factor of
sigma 0.3). Run it once per version (``PYTHONPATH`` names each ``src``), writing ``--out``; then
``--against OLD.json`` on the new one prints, per shape and condition, the median and 90th
percentile of new / old makespan and how many got better or worse.

    PYTHONPATH=old/src python bench/failpaths.py --out /tmp/old.json
    PYTHONPATH=src python bench/failpaths.py --out /tmp/new.json --against /tmp/old.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

if __package__ in {None, ""}:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.seeds import FLEET, NOISE, SHAPES, graph_jobs
from offload.scheduler.dag import Job
from offload.scheduler.simulate import simulate

__all__ = ["main", "makespans"]

CONDITIONS = ("history", "noisy")


def _makespan(jobs: list[Job], failing: list[str], condition: str, seed: int) -> float:
    actual = {j.id: j.work_estimate for j in jobs}
    if condition == "noisy":
        rng = random.Random(seed)
        jobs = [
            Job(
                j.id,
                j.work_estimate * rng.lognormvariate(0.0, NOISE),
                j.deps,
                j.system,
                j.required_features,
            )
            for j in jobs
        ]
    result = simulate(jobs, list(FLEET), failing=failing, strict=False, actual=actual)
    return result.makespan


def makespans(seeds: int, nodes: int, fail: float) -> dict[str, float]:
    """``shape/seed/condition`` -> makespan with a ``fail`` share of the builds failing."""
    found: dict[str, float] = {}
    for shape in SHAPES:
        for seed in range(seeds):
            jobs = graph_jobs(shape, nodes, seed)
            rng = random.Random(10_000 + seed)
            failing = [j.id for j in rng.sample(jobs, max(1, round(fail * len(jobs))))]
            for condition in CONDITIONS:
                found[f"{shape}/{seed}/{condition}"] = _makespan(jobs, failing, condition, seed)
    return found


def compare(new: dict[str, float], old: dict[str, float]) -> list[str]:
    lines = ["| shape | condition | changed | better | worse | median new/old | p90 |"]
    lines.append("|---|---|---|---|---|---|---|")
    every: list[float] = []
    for shape in [*SHAPES, "all"]:
        for condition in CONDITIONS:
            keys = [
                k
                for k in new
                if k.endswith("/" + condition) and (shape == "all" or k.startswith(shape + "/"))
            ]
            ratios = [new[k] / old[k] for k in keys if old[k] > 0]
            if shape != "all":
                every.extend(ratios)
            p90 = statistics.quantiles(ratios, n=10)[-1]
            changed = sum(1 for r in ratios if r != 1.0)
            better = sum(1 for r in ratios if r < 1.0)
            lines.append(
                f"| {shape} | {condition} | {changed}/{len(ratios)} | {better} "
                f"| {changed - better} | {statistics.median(ratios):.4f} | {p90:.4f} |"
            )
    changed_only = [r for r in every if r != 1.0]
    if changed_only:
        lines.append(
            f"changed cases: {len(changed_only)}, median new/old "
            f"{statistics.median(changed_only):.4f}, geometric mean "
            f"{statistics.geometric_mean(changed_only):.4f}, best {min(changed_only):.4f}, "
            f"worst {max(changed_only):.4f}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--fail", type=float, default=0.05)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--against", type=Path)
    args = parser.parse_args(argv)
    found = makespans(args.seeds, args.nodes, args.fail)
    args.out.write_text(json.dumps(found, indent=0, sort_keys=True) + "\n", encoding="utf-8")
    if args.against is not None:
        old = json.loads(args.against.read_text(encoding="utf-8"))
        print("\n".join(compare(found, old)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
