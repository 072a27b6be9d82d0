"""``offload build --dry-run``'s plan as the user reads it: what would be fetched from builders
and built, in nix-build's words (``these 3 derivations will be built:``, then one store path a
line) with offload's plan after each path, then the estimated time; or as one JSON object."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from offload.build import dry_run
from offload.cli import interrupts
from offload.cli.build_keep import guarded_estimator, opened_history
from offload.config.pool import Pool

__all__ = ["show_dry_run"]


def _listed(noun: str, done: str, items: list[tuple[str, str]]) -> None:
    """Nix's dry-run list ("these 2 derivations will be built:", one store path a line), each
    path followed by offload's plan for it."""
    head = f"this {noun}" if len(items) == 1 else f"these {len(items)} {noun}s"
    print(f"{head} will be {done}:", file=sys.stderr)
    width = max(len(path) for path, _ in items)
    for path, plan in items:
        print(f"  {path:<{width}}  {plan}", file=sys.stderr)


def show_dry_run(roots: list[tuple[str, str]], pool: Pool, state: Path, *, as_json: bool) -> int:
    with opened_history(state) as history:
        graph, sim, unreachable = interrupts.run(
            dry_run(roots, pool, guarded_estimator(history, pool))
        )
    rows = sorted(
        (r for r in sim.schedule if r.outcome == "built"), key=lambda r: (r.start, r.machine)
    )
    fetch = sorted(graph.fetch.items(), key=lambda item: graph.drvs[item[0]].name)
    if as_json:
        plan = {
            "fetch": [
                {"drv_path": drv, "name": graph.drvs[drv].name, "machine": machine}
                for drv, machine in fetch
            ],
            "build": [
                {
                    "drv_path": r.job,
                    "name": graph.drvs[r.job].name,
                    "machine": r.machine,
                    "start": round(r.start, 3),
                    "end": round(r.end, 3),
                }
                for r in rows
            ],
            "makespan": round(sim.makespan, 3),
            "lower_bound": round(sim.lower_bound, 3),
            "unschedulable": sorted(sim.failed),
            "unreachable": unreachable,
        }
        print(json.dumps(plan, indent=1))
        return 0
    for name, error in sorted(unreachable.items()):
        print(f"warning: builder '{name}' left out of the plan: {error}", file=sys.stderr)
    if fetch:
        _listed("output", "fetched from builders", [(drv, f"from {m}") for drv, m in fetch])
    if not rows:
        if not fetch:
            print("nothing to build: every requested output is valid locally", file=sys.stderr)
        return 0
    planned = [
        (r.job, f"on {r.machine:<10} at +{r.start:6.1f}s for {r.end - r.start:6.1f}s") for r in rows
    ]
    _listed(
        "derivation",
        "built",
        planned + [(job, "on no machine: none can build it") for job in sorted(sim.failed)],
    )
    print(
        f"estimated time {sim.makespan:.1f}s (lower bound {sim.lower_bound:.1f}s); "
        "estimates come from history, 10s per derivation without it",
        file=sys.stderr,
    )
    return 0
