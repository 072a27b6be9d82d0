"""``offload build --dry-run``: what a run would fetch from builders, build and where,
planned by the simulator from the same graph a run reads, without building anything.

A pool with no machine at all (``-j 0`` and no builder, or every builder unreachable) still
reads the graph: a dry run builds nothing, so nothing needs a machine, and nix-build lists what
it would build then too. There is nothing to plan (``sim`` is None): the simulator is not asked
to place jobs on no machine.

Builders an earlier run backed off are left out as a run leaves them out: not asked, not in the
plan (``backed_off``). A run tries them again when nothing else can build what is left; so does
the plan, when with them it places a derivation the others could not (or there are no others):
then they are in it, not asked what they hold (``retried``: the plan assumes they answer)."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from offload.backoff import Health
from offload.build.dry_caches import caches_asked
from offload.build.faults import explain
from offload.build.graph import DrvGraph, load_graph
from offload.build.members import local_spec, pool_members, pool_specs
from offload.build.plan import estimated_plan
from offload.build.sessions import open_sessions
from offload.config.pool import Pool
from offload.scheduler.run import PoolMember, plan_jobs
from offload.scheduler.run.plan import guessed_drvs
from offload.scheduler.search import simulate_tuned
from offload.scheduler.simulate import SimResult
from offload.transport.links import LocalLink
from offload.ui.events import MachineEvent

__all__ = ["DryRun", "dry_run"]


@dataclass(frozen=True)
class DryRun:
    """What a run would do: ``sim`` None when no machine could build anything (no machine in
    the pool, or every builder in ``unreachable``)."""

    graph: DrvGraph
    sim: SimResult | None
    unreachable: dict[str, str]
    caches: list[MachineEvent] = field(default_factory=list)  # binary caches left out
    # What the local Nix would fetch from its caches, as it listed it (``dry_caches``).
    fetched: list[str] = field(default_factory=list)
    backed_off: dict[str, Health] = field(default_factory=dict)  # left out of the plan
    retried: bool = False  # backed_off are in the plan after all: nothing else builds it all


async def dry_run(
    roots: Sequence[tuple[str, str]],
    pool: Pool,
    estimate: Callable[[Iterable[str]], Mapping[str, float]] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    nix_said: Callable[[str], None] | None = None,  # default: stderr
    backoff: Mapping[str, Health] | None = None,
) -> DryRun:
    """What a run would fetch from builders, build and where, planned without building.

    Builders are asked which needed outputs they hold, as a run asks them; the ones that do not
    answer are left out of the plan and returned with their errors. Binary caches are asked
    which of the roots to build they have, as nix-build --dry-run asks (``dry_caches``: what
    the local Nix says then goes to ``nix_said``): what they have, and what only it needed, is
    left out of the plan, as a run substitutes it; the caches Nix left out are returned.
    """
    unreachable: dict[str, str] = {}
    every = pool_specs(pool)
    names = {spec.name for spec in every}
    backed_off = {name: health for name, health in (backoff or {}).items() if name in names}
    async with (
        LocalLink(max_sessions=1, env=pool.local_env()) as local_link,
        _members(pool, local_link, env) as members,
        contextlib.AsyncExitStack() as opened,
    ):
        remote = {
            m.spec.name: m.link for m in members if m.remote and m.spec.name not in backed_off
        }
        local, clients, _, _ = await open_sessions(opened, local_link, remote, unreachable, roots)
        graph = await load_graph(local, roots, remotes=clients)
        building = set(graph.order)
        to_build = [root for root in roots if root[0] in building]
        caches = await caches_asked(to_build, pool, nix_said or _to_stderr)
        if caches.built is not None:  # a run substitutes the rest
            graph = dataclasses.replace(
                graph, order=[drv for drv in graph.order if drv in caches.built]
            )
        plan, estimates = await estimated_plan(graph, local, estimate)
    jobs = plan_jobs(plan, estimates, local_spec(pool))
    machines = {m.name: m for m in pool.machines}
    unreachable = {name: explain(machines[name], error) for name, error in unreachable.items()}
    specs = [spec for spec in every if spec.name not in unreachable]
    kept = [spec for spec in specs if spec.name not in backed_off]
    # The run tunes its plan when history gives every estimate (``scheduler.search``).
    known = bool(jobs) and not guessed_drvs(plan, estimates)
    sim = simulate_tuned(jobs, kept, search=known, strict=False) if kept else None
    retried = False
    if backed_off and (sim is None or sim.failed):
        # A run tries the backed-off builders again when nothing else can build what is left.
        full = simulate_tuned(jobs, specs, search=known, strict=False)
        retried = sim is None or set(full.failed) < set(sim.failed)
        sim = full if retried else sim
    return DryRun(graph, sim, unreachable, caches.left_out, caches.fetched, backed_off, retried)


def _members(
    pool: Pool, local_link: LocalLink, env: Mapping[str, str] | None
) -> AbstractAsyncContextManager[list[PoolMember]]:
    """The pool's members, none for a pool with no machine (which a run refuses)."""
    if not pool_specs(pool):
        return contextlib.nullcontext([])
    return pool_members(pool, local_link, env)


def _to_stderr(line: str) -> None:
    # What the local Nix says as its caches are asked: as nix-build --dry-run shows it.
    sys.stderr.write(line + "\n")
