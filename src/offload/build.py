"""One ``offload build`` run: from .drv paths to valid local outputs, over the whole pool.

The run reads the derivation graph from the local .drv files, finds what is missing locally,
turns it into a ``BuildPlan``, and hands it to the executor with one member per machine of the
pool (the local machine included, like any other). The executor copies every built output back
as it is built, through the local store's own serve process, so at the end the requested
outputs are valid here and nothing partial was ever registered.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from offload.backoff import Health
from offload.config.machines import Machine
from offload.config.pool import Pool
from offload.errors import ConfigError, OffloadError, SchedulerError
from offload.nix import result_links
from offload.protocol.serve import ServeClient
from offload.scheduler.policy import MachineSlotSpec
from offload.scheduler.run import (
    BuildPlan,
    Executor,
    Link,
    PoolMember,
    RunReport,
    plan_jobs,
    send_closure,
)
from offload.scheduler.simulate import SimResult, simulate
from offload.slots import SlotLocks, slot_key
from offload.store.drv import Derivation, read_derivation
from offload.store.path import split_name_version
from offload.transport.links import LocalLink, MachineLink
from offload.ui.events import Event, JobFinished

__all__ = [
    "LOCAL",
    "DrvGraph",
    "build_plan",
    "load_graph",
    "out_links",
    "pool_members",
    "run_build",
]

LOCAL = "local"


@dataclass
class DrvGraph:
    """The derivations reachable from the requested ones whose needed outputs are missing."""

    drvs: dict[str, Derivation]
    wanted: dict[str, set[str]]  # drv path -> output names needed (by the user or a dependent)
    order: list[str]  # to build, dependencies first
    fetch: dict[str, str] = field(default_factory=dict)  # drv -> builder already holding it

    def output_path(self, drv: str, output: str) -> str:
        path = self.drvs[drv].outputs[output].path
        if not path:
            raise ConfigError(
                f"{drv}: output '{output}' has no path known in advance",
                hint="content-addressed and impure derivations are not supported yet",
            )
        return path


async def load_graph(
    local: ServeClient,
    roots: Sequence[tuple[str, str]],
    read: Callable[[str], Derivation] = read_derivation,
    remotes: Mapping[str, ServeClient] | None = None,
) -> DrvGraph:
    """``roots`` are (drv path, output name) pairs, as nix-instantiate names them.

    A derivation whose needed outputs are all valid on one of ``remotes`` is to be fetched from
    there, not built, and what only it needed is not looked at.
    """
    remotes = dict(remotes or {})
    fetch: dict[str, str] = {}
    drvs: dict[str, Derivation] = {}
    wanted: dict[str, set[str]] = {}
    for root, output in roots:
        if root not in drvs:
            drvs[root] = read(root)
            wanted[root] = set()
        if output not in drvs[root].outputs:
            raise ConfigError(f"{root} has no output '{output}'")
        wanted[root].add(output)
    needs_build: set[str] = set()
    frontier = list(dict.fromkeys(root for root, _ in roots))
    # Breadth-first with one validity query per level, so a deep graph costs few round trips.
    while frontier:
        paths = {
            drvs[d].outputs[o].path for d in frontier for o in wanted[d] if drvs[d].outputs[o].path
        }
        valid = await local.query_valid_paths(paths)
        elsewhere = await _valid_on_remotes(remotes, paths - valid)
        next_frontier: list[str] = []
        for drv_path in frontier:
            drv = drvs[drv_path]
            if drv_path in needs_build or drv_path in fetch:
                continue
            missing = {drv.outputs[o].path for o in wanted[drv_path]} - valid
            if not missing:
                continue
            holder = next((name for name, has in elsewhere.items() if missing <= has), None)
            if holder is not None:
                fetch[drv_path] = holder
                continue
            needs_build.add(drv_path)
            for dep, outputs in drv.input_drvs.items():
                if dep not in drvs:
                    drvs[dep] = read(dep)
                    wanted[dep] = set()
                wanted[dep].update(outputs)
                next_frontier.append(dep)
        frontier = list(dict.fromkeys(next_frontier))
    return DrvGraph(drvs=drvs, wanted=wanted, order=_topological(needs_build, drvs), fetch=fetch)


async def _valid_on_remotes(
    remotes: dict[str, ServeClient], paths: set[str]
) -> dict[str, set[str]]:
    """Which of ``paths`` each builder has; a builder that fails to answer is asked no more."""
    if not paths or not remotes:
        return {}
    names = list(remotes)
    answers = await asyncio.gather(
        *(remotes[name].query_valid_paths(paths) for name in names), return_exceptions=True
    )
    result: dict[str, set[str]] = {}
    for name, answer in zip(names, answers, strict=True):
        if isinstance(answer, OffloadError):
            del remotes[name]
        elif isinstance(answer, BaseException):
            raise answer
        else:
            result[name] = answer
    return result


def _topological(selected: set[str], drvs: Mapping[str, Derivation]) -> list[str]:
    seen: set[str] = set()
    order: list[str] = []
    for root in sorted(selected):
        if root in seen:
            continue
        seen.add(root)
        stack = [(root, iter(sorted(drvs[root].input_drvs)))]
        while stack:
            current, deps = stack[-1]
            for dep in deps:
                if dep in selected and dep not in seen:
                    seen.add(dep)
                    stack.append((dep, iter(sorted(drvs[dep].input_drvs))))
                    break
            else:
                stack.pop()
                order.append(current)
    return order


def build_plan(graph: DrvGraph) -> BuildPlan:
    inputs: dict[str, tuple[str, ...]] = {}
    outputs: dict[str, tuple[str, ...]] = {}
    for drv_path in graph.order:
        drv = graph.drvs[drv_path]
        paths = set(drv.input_srcs)
        for dep, names in drv.input_drvs.items():
            paths.update(graph.output_path(dep, name) for name in names)
        inputs[drv_path] = tuple(sorted(paths))
        outputs[drv_path] = tuple(graph.output_path(drv_path, name) for name in sorted(drv.outputs))
    return BuildPlan(drvs=graph.drvs, order=graph.order, inputs=inputs, outputs=outputs)


def _slot_spec(machine: Machine) -> MachineSlotSpec:
    return MachineSlotSpec(
        name=machine.name,
        speed=machine.speed_factor,
        slots=machine.max_jobs,
        systems=frozenset(machine.systems),
        supported=frozenset(machine.supported_features),
        mandatory=frozenset(machine.mandatory_features),
    )


def local_spec(pool: Pool) -> MachineSlotSpec | None:
    if pool.local is None or pool.local.max_jobs <= 0:
        return None
    return MachineSlotSpec(
        name=LOCAL,
        speed=pool.local.speed_factor,
        slots=pool.local.max_jobs,
        systems=frozenset(pool.local.systems),
        supported=frozenset(pool.local.supported_features),
    )


def pool_specs(pool: Pool) -> list[MachineSlotSpec]:
    """The pool as the scheduler sees it: the local machine first, then each usable builder."""
    local = local_spec(pool)
    builders = [_slot_spec(m) for m in pool.machines if m.enabled and m.max_jobs > 0]
    return ([local] if local else []) + builders


@contextlib.asynccontextmanager
async def pool_members(
    pool: Pool, local_link: LocalLink, env: Mapping[str, str] | None = None
) -> AsyncIterator[list[PoolMember]]:
    members: list[PoolMember] = []
    async with contextlib.AsyncExitStack() as stack:
        local = local_spec(pool)
        if local is not None:
            members.append(PoolMember(local, local_link, remote=False, slot_key=LOCAL))
        for machine in pool.machines:
            if not machine.enabled or machine.max_jobs <= 0:
                continue
            # Nix's setting turns it on for every builder; else the machine's URI parameter.
            link = await stack.enter_async_context(
                MachineLink.from_machine(
                    machine, env=env, substitute=pool.builders_use_substitutes or None
                )
            )
            members.append(
                PoolMember(
                    _slot_spec(machine),
                    link,
                    remote=True,
                    slot_key=slot_key(machine.uri),
                    substitute=link.substitute,
                )
            )
        if not members:
            raise SchedulerError(
                "no machine to build on: the local machine takes no jobs and no builder is set",
                hint="pass -j N, --builders, or set `builders` in nix.conf",
            )
        yield members


async def run_build(
    roots: Sequence[tuple[str, str]],
    pool: Pool,
    *,
    emit: Callable[[Event], None],
    log_sink: Callable[[str, str, str], None] | None = None,
    keep_going: bool = False,
    estimate: Callable[[Iterable[str]], Mapping[str, float]] | None = None,
    env: Mapping[str, str] | None = None,
    slots: SlotLocks | None = None,
    backoff: Mapping[str, Health] | None = None,
) -> tuple[RunReport, DrvGraph]:
    """Build what ``roots`` need over ``pool``; on success their outputs are valid locally."""
    # Every remote build borrows a local session to send inputs and fetch outputs.
    sessions = (
        2 + sum(m.max_jobs for m in pool.machines) + (pool.local.max_jobs if pool.local else 0)
    )
    down = set(backoff or {})
    async with (
        LocalLink(max_sessions=sessions) as local_link,
        pool_members(pool, local_link, env) as members,
    ):
        remote = {m.spec.name: m.link for m in members if m.remote and m.spec.name not in down}
        unreachable: dict[str, str] = {}
        async with local_link.session() as local, _borrow_all(remote, unreachable) as clients:
            graph = await load_graph(local, roots, remotes=clients)
            fetched = await _fetch_existing(graph, clients, local, emit)
        plan = build_plan(graph)
        pnames = {split_name_version(plan.drvs[d].name)[0] for d in plan.order}
        estimates = estimate(pnames) if estimate is not None else {}
        executor = Executor(
            plan,
            members,
            local_link,
            emit=emit,
            log_sink=log_sink,
            keep_going=keep_going,
            estimates=estimates,
            outputs=tuple(path for path, _ in out_links(roots, graph, "result")),
            slots=slots,
            backoff=backoff,
            unreachable=unreachable,
        )
        report = await executor.run()
    report.finished[:0] = fetched
    return report, graph


@contextlib.asynccontextmanager
async def _borrow_all(
    links: Mapping[str, Link], unreachable: dict[str, str]
) -> AsyncIterator[dict[str, ServeClient]]:
    """A session on each builder that answers, opened in parallel; the others are left out
    and their errors put in ``unreachable``."""
    managers = {name: link.session() for name, link in links.items()}
    entered = await asyncio.gather(
        *(cm.__aenter__() for cm in managers.values()), return_exceptions=True
    )
    clients: dict[str, ServeClient] = {}
    opened: list[AbstractAsyncContextManager[ServeClient]] = []
    for (name, cm), result in zip(managers.items(), entered, strict=True):
        if isinstance(result, ServeClient):
            clients[name] = result
            opened.append(cm)
        elif isinstance(result, OffloadError):
            unreachable[name] = result.message
        elif isinstance(result, BaseException):
            raise result
    try:
        yield clients
    finally:
        for cm in opened:
            await cm.__aexit__(None, None, None)


async def _fetch_existing(
    graph: DrvGraph,
    clients: Mapping[str, ServeClient],
    local: ServeClient,
    emit: Callable[[Event], None],
) -> list[JobFinished]:
    """Copy outputs that a builder already holds instead of building them again."""
    done: list[JobFinished] = []
    for drv_path, machine in sorted(graph.fetch.items()):
        started = time.time()
        outputs = [graph.output_path(drv_path, o) for o in sorted(graph.wanted[drv_path])]
        received = await send_closure(clients[machine], local, outputs)
        event = JobFinished(
            drv_path=drv_path,
            name=graph.drvs[drv_path].name,
            machine=machine,
            status="fetched",
            started=started,
            finished=time.time(),
            bytes_sent=0,
            bytes_received=received,
            error=None,
            time=time.time(),
        )
        done.append(event)
        emit(event)
    return done


async def dry_run(
    roots: Sequence[tuple[str, str]],
    pool: Pool,
    estimate: Callable[[Iterable[str]], Mapping[str, float]] | None = None,
) -> tuple[DrvGraph, SimResult]:
    """What a run would build and where, planned on the pool without building anything.

    Builders are not contacted: outputs they may already hold are counted as to be built.
    """
    async with LocalLink(max_sessions=1) as local_link, local_link.session() as local:
        graph = await load_graph(local, roots)
    plan = build_plan(graph)
    pnames = {split_name_version(plan.drvs[d].name)[0] for d in plan.order}
    jobs = plan_jobs(plan, estimate(pnames) if estimate is not None else {})
    specs = pool_specs(pool)
    if not specs:
        raise SchedulerError("no machine to build on", hint="pass -j N or --builders")
    return graph, simulate(jobs, specs, strict=False)


def out_links(
    roots: Iterable[tuple[str, str]], graph: DrvGraph, base: str
) -> list[tuple[str, str]]:
    """(output path, link) pairs named as nix-build names them: result, result-2, result-dev."""
    roots = list(roots)
    return [
        (graph.output_path(drv, output), link)
        for (drv, output), link in zip(roots, result_links(roots, base), strict=True)
    ]
