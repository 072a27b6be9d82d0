"""``offload build --dry-run``'s plan as the user reads it: what would be fetched from builders
and built, in nix-build's words (``these 3 derivations will be built:``, then one store path a
line) with offload's plan after each path, then what the binary caches would give, as the local
Nix lists it (``these 2 paths will be fetched (...):``), and the estimated time; or as one JSON
object.
Before it, the binary caches the local Nix left out as it was asked what they have, one
``warning:`` line each as a run says them (in JSON, ``caches_left_out`` as well)."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from offload.backoff import Health
from offload.build import dry_run
from offload.build.dry_caches import listed_paths
from offload.build.dryrun import DryRun
from offload.cli import interrupts
from offload.cli.build_keep import guarded_estimator, opened_history
from offload.config.left_out import could_build
from offload.config.pool import Pool
from offload.scheduler.simulate import RunRecord
from offload.ui.plain import machine_warning
from offload.ui.term import sanitize

__all__ = ["show_dry_run"]


# Why no machine could build anything, after "no machine could build them: ".
_NO_BUILDER = "the local machine takes no jobs (max-jobs 0) and no builder is set"
_ALL_LEFT_OUT = "the local machine takes no jobs (max-jobs 0) and every builder was left out"
# The local machine taken out by name (--exclude local, an --on without it), as a run says it
# (build.members): it takes jobs, so "takes no jobs (max-jobs 0)" would be false.
_NAMED_OUT = "--on/--exclude left out the local machine and every builder"
_NAMED_OUT_DOWN = (
    "--on/--exclude left out the local machine, and every builder it kept was left out"
)


def _listed(noun: str, done: str, items: list[tuple[str, str]]) -> None:
    """Nix's dry-run list ("these 2 derivations will be built:", one store path a line), each
    path followed by offload's plan for it, if any."""
    head = f"this {noun}" if len(items) == 1 else f"these {len(items)} {noun}s"
    print(f"{head} will be {done}:", file=sys.stderr)
    width = max(len(path) for path, _ in items)
    for path, plan in items:
        print(f"  {path:<{width}}  {plan}".rstrip(), file=sys.stderr)


@dataclass(frozen=True)
class _Plan:
    """The dry run as shown: builds placed (by start), the rest nix-build would list
    (dependencies first) with why no machine builds it, and what comes from builders."""

    rows: list[RunRecord]
    unplaced: list[tuple[str, str]]  # (drv, why)
    fetch: list[tuple[str, str]]  # (drv, builder)
    no_machine: str | None  # why no machine could build anything (no plan at all)
    unbuildable: dict[str, str] = field(default_factory=dict)  # why none can build each one


def _plan(run: DryRun, pool: Pool) -> _Plan:
    graph, sim = run.graph, run.sim
    fetch = sorted(graph.fetch.items(), key=lambda item: graph.drvs[item[0]].name)
    if sim is None:  # nix-build lists what it would build all the same
        said = pool.no_machine()
        # Kept with maxJobs 0, or ones offload does not connect to: said as a run says it.
        if said is not None and (pool.idle_builders() is not None or pool.refused):
            none = said[0]
        elif pool.local_left_out:
            none = _NAMED_OUT_DOWN if run.unreachable else _NAMED_OUT
        else:
            left_out = run.unreachable or pool.builders_left_out
            none = _ALL_LEFT_OUT if left_out else _NO_BUILDER
        return _Plan([], [(drv, "") for drv in graph.order], fetch, none)
    rows = sorted(
        (r for r in sim.schedule if r.outcome == "built"), key=lambda r: (r.start, r.machine)
    )
    # A derivation none can build, and its dependents: a run fails them, nix-build lists them.
    why = dict.fromkeys(sim.skipped, "on no machine: it needs a derivation none can build")
    unbuildable = dict(sim.unbuildable)
    for drv, reason in unbuildable.items():  # and the machine left out that could, as a run
        needs = graph.drvs[drv].platform, graph.drvs[drv].required_features
        if (left := could_build(pool, *needs)) is not None:
            unbuildable[drv] = f"{reason}; {left[0]} ({left[1]})"
    why.update(
        (drv, f"on no machine: none can build it: {unbuildable[drv]}")
        if drv in unbuildable
        else (drv, "on no machine: none can build it")
        for drv in sim.failed
    )
    unplaced = [(drv, why[drv]) for drv in graph.order if drv in why]
    return _Plan(rows, unplaced, fetch, None, unbuildable)


def show_dry_run(
    roots: list[tuple[str, str]],
    pool: Pool,
    state: Path,
    *,
    as_json: bool,
    backoff: Mapping[str, Health] | None = None,
    check: bool = False,  # nix-build --check: what is valid is built again, to compare
) -> int:
    """The plan on stderr (or stdout, ``as_json``); 0, as nix-build's dry run, even when no
    machine could build some or all of it: a dry run builds nothing and says what it would,
    and a run would refuse or fail those derivations. ``backoff``: the builders earlier runs
    backed off, left out as a run leaves them out (``build.dryrun``)."""
    with opened_history(state) as history:
        estimator = guarded_estimator(history, pool)
        run = interrupts.run(dry_run(roots, pool, estimator, backoff=backoff))
    for event in run.caches:  # on stderr whatever shows the plan, as a run's warnings
        print(machine_warning(event), file=sys.stderr)
    plan = _plan(run, pool)
    if as_json:
        # One line, as --json's help promises (one JSON object per line): a script reading
        # lines gets the plan whole.
        print(json.dumps(_as_json(run, plan)))
        return 0
    for name, error in sorted(run.unreachable.items()):
        # The error carries the builder's words: shown, never obeyed.
        print(f"warning: builder '{name}' left out of the plan: {sanitize(error)}", file=sys.stderr)
    for name, health in sorted(run.backed_off.items()):
        print(f"warning: builder '{name}' {_backed_off(run, name, health)}", file=sys.stderr)
    if plan.fetch:
        _listed("output", "fetched from builders", [(drv, f"from {m}") for drv, m in plan.fetch])
    planned = [
        (r.job, f"on {r.machine:<10} at +{r.start:6.1f}s for {r.end - r.start:6.1f}s")
        for r in plan.rows
    ]
    if not planned and not plan.unplaced:
        if not plan.fetch and not run.fetched:
            again = " (--check builds them again here, to compare)" if check else ""
            print(
                f"nothing to build: every requested output is valid locally{again}", file=sys.stderr
            )
        _from_caches(run)
        return 0
    _listed("derivation", "built", planned + plan.unplaced)
    _from_caches(run)
    if plan.no_machine is not None:
        them = "it" if len(plan.unplaced) == 1 else "them"
        print(f"no machine could build {them}: {plan.no_machine}", file=sys.stderr)
    elif run.sim is not None and plan.rows:
        print(
            f"estimated time {run.sim.makespan:.1f}s (lower bound {run.sim.lower_bound:.1f}s, by "
            "these estimates); estimates come from history, or from Nix's build logs read as if "
            "it built on the fastest machine (too high for one built on a slower one), 10s per "
            "derivation without either",
            file=sys.stderr,
        )
    return 0


def _from_caches(run: DryRun) -> None:
    """What the local Nix would fetch from its caches, in its own words, after what would be
    built, where nix-build --dry-run lists it."""
    for line in run.fetched:
        print(line, file=sys.stderr)


def _backed_off(run: DryRun, name: str, health: Health) -> str:
    """What the plan did with a builder an earlier run backed off, as a run would say it."""
    said = sanitize(health.said(name))
    if not run.retried:
        return f"left out of the plan: {said}"
    return (
        f"is in the plan though {said}: a run tries it again, as nothing else can build all of"
        " this; not asked what it holds, the plan assumes it answers"
    )


def _as_json(run: DryRun, plan: _Plan) -> dict[str, object]:
    graph, sim = run.graph, run.sim
    return {
        "fetch": [
            {"drv_path": drv, "name": graph.drvs[drv].name, "machine": machine}
            for drv, machine in plan.fetch
        ],
        "build": [
            {
                "drv_path": r.job,
                "name": graph.drvs[r.job].name,
                "machine": r.machine,
                "start": round(r.start, 3),
                "end": round(r.end, 3),
            }
            for r in plan.rows
        ],
        "makespan": round(sim.makespan, 3) if sim is not None else 0.0,
        "lower_bound": round(sim.lower_bound, 3) if sim is not None else 0.0,
        "unschedulable": [drv for drv, _ in plan.unplaced],
        # Why, for those no machine can build (their dependents: a derivation none can build).
        "unschedulable_why": plan.unbuildable,
        # The output paths the local Nix would fetch from its binary caches.
        "substitute": listed_paths(run.fetched),
        "no_machine": plan.no_machine,
        "unreachable": run.unreachable,
        "backed_off": {
            name: {
                "failures": h.failures,
                "until": h.until,
                "reason": h.why,
                "retried": run.retried,
            }
            for name, h in run.backed_off.items()
        },
        "caches_left_out": [
            {"machine": e.machine, "cache": e.cache, "message": e.message} for e in run.caches
        ],
    }
