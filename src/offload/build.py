"""One ``offload build`` run: from .drv paths to valid local outputs, over the whole pool.

The run reads the derivation graph from the local .drv files, finds what is missing locally,
takes what a builder already holds or the local store's binary caches have instead of building
it (when the local Nix would substitute: ``substitute`` on and ``substituters`` set), turns the
rest into a ``BuildPlan``, and hands it to the executor with one member per machine of the
pool (the local machine included, like any other). The executor copies every built output back
as it is built, through the local store's own serve process, so at the end the requested
outputs are valid here and nothing partial was ever registered.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path

from offload.backoff import Health
from offload.config.machines import Machine
from offload.config.pool import Pool
from offload.errors import ConfigError, OffloadError, SchedulerError
from offload.load import BOOT_ID_FILE, loaded_specs
from offload.nix import result_links
from offload.protocol.serve import ServeClient
from offload.scheduler.policy import MachineSlotSpec
from offload.scheduler.run import (
    BuildPlan,
    Executor,
    MemberLink,
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
from offload.ui.events import Event, JobFinished, MachineEvent

__all__ = [
    "LOCAL",
    "DrvGraph",
    "Roots",
    "Substituted",
    "build_plan",
    "load_graph",
    "out_links",
    "pool_members",
    "run_build",
]

LOCAL = "local"

# (drv path, output name) pairs, or a function that evaluates them (offload.nix.instantiate).
Roots = Sequence[tuple[str, str]] | Callable[[], Sequence[tuple[str, str]]]


@dataclass(frozen=True)
class Substituted:
    """Outputs of one derivation that the local store fetched from its binary caches."""

    outputs: tuple[str, ...]  # store paths
    started: float  # wall clock of the substituting query
    finished: float


@dataclass
class DrvGraph:
    """The derivations reachable from the requested ones whose needed outputs are missing."""

    drvs: dict[str, Derivation]
    wanted: dict[str, set[str]]  # drv path -> output names needed (by the user or a dependent)
    order: list[str]  # to build, dependencies first
    fetch: dict[str, str] = field(default_factory=dict)  # drv -> builder already holding it
    roots: list[tuple[str, str]] = field(default_factory=list)  # what was asked for, in order
    # drv -> what the local store substituted for it while the graph was read: not built.
    substituted: dict[str, Substituted] = field(default_factory=dict)

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
    *,
    substitute: bool = False,
) -> DrvGraph:
    """``roots`` are (drv path, output name) pairs, as nix-instantiate names them.

    A derivation whose needed outputs are all valid on one of ``remotes`` is to be fetched from
    there, not built, and what only it needed is not looked at. With ``substitute``, the local
    store is then asked to substitute the outputs still missing (top-down, as Nix's queryMissing
    goes): a derivation whose outputs became valid is done, and its inputs are not looked at.
    Without it no such query is made.
    """
    remotes = dict(remotes or {})
    fetch: dict[str, str] = {}
    substituted: dict[str, Substituted] = {}
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
        missing: dict[str, set[str]] = {}
        for drv_path in frontier:
            if drv_path in needs_build or drv_path in fetch:
                continue
            drv = drvs[drv_path]
            lacking = {drv.outputs[o].path for o in wanted[drv_path]} - valid
            if not lacking:
                continue
            # A builder's copy before the caches: the builders already answered (no extra
            # query), and offload trusts their outputs as Nix trusts what build-remote copies
            # back; a cache costs a lookup per path, possibly over the internet, and Nix spends
            # seconds retrying one that is unreachable. Either beats building it again.
            holder = next((name for name, has in elsewhere.items() if lacking <= has), None)
            if holder is not None:
                fetch[drv_path] = holder
            else:
                missing[drv_path] = lacking
        if substitute and missing:
            started = time.time()
            # The store substitutes what its caches have (and those paths' closures) before it
            # answers; a failure there is only a warning on its stderr.
            got = await local.query_valid_paths(set().union(*missing.values()), substitute=True)
            finished = time.time()
            for drv_path, lacking in missing.items():
                if lacking <= got:
                    # Seen again when a later dependent wants more of its outputs: keep both.
                    before = substituted.get(drv_path)
                    earlier = set(before.outputs) if before else set()
                    substituted[drv_path] = Substituted(
                        tuple(sorted(lacking | earlier)),
                        before.started if before else started,
                        finished,
                    )
            missing = {d: lacking for d, lacking in missing.items() if not lacking <= got}
        next_frontier: list[str] = []
        for drv_path in missing:
            needs_build.add(drv_path)
            for dep, outputs in drvs[drv_path].input_drvs.items():
                if dep not in drvs:
                    drvs[dep] = read(dep)
                    wanted[dep] = set()
                wanted[dep].update(outputs)
                next_frontier.append(dep)
        frontier = list(dict.fromkeys(next_frontier))
    return DrvGraph(
        drvs=drvs,
        wanted=wanted,
        order=_topological(needs_build, drvs),
        fetch=fetch,
        substituted=substituted,
        roots=list(roots),
    )


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


def build_plan(graph: DrvGraph, sizes: Mapping[str, int] | None = None) -> BuildPlan:
    """The plan for ``graph``; ``sizes`` (store path -> NAR bytes) sizes each build's sources."""
    sizes = sizes or {}
    inputs: dict[str, tuple[str, ...]] = {}
    outputs: dict[str, tuple[str, ...]] = {}
    for drv_path in graph.order:
        drv = graph.drvs[drv_path]
        paths = set(drv.input_srcs)
        for dep, names in drv.input_drvs.items():
            paths.update(graph.output_path(dep, name) for name in names)
        inputs[drv_path] = tuple(sorted(paths))
        outputs[drv_path] = tuple(graph.output_path(drv_path, name) for name in sorted(drv.outputs))
    source_bytes = {
        drv_path: sum(sizes.get(src, 0) for src in graph.drvs[drv_path].input_srcs)
        for drv_path in graph.order
    }
    return BuildPlan(
        drvs=graph.drvs,
        order=graph.order,
        inputs=inputs,
        outputs=outputs,
        source_bytes=source_bytes,
    )


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
    roots: Roots,
    pool: Pool,
    *,
    emit: Callable[[Event], None],
    log_sink: Callable[[str, str, str], None] | None = None,
    keep_going: bool = False,
    estimate: Callable[[Iterable[str]], Mapping[str, float]] | None = None,
    env: Mapping[str, str] | None = None,
    slots: SlotLocks | None = None,
    backoff: Mapping[str, Health] | None = None,
    fetch_all: bool = False,
) -> tuple[RunReport, DrvGraph]:
    """Build what ``roots`` need over ``pool``; on success their outputs are valid locally.

    Other outputs stay on the builder that made them unless a local build needs them, or
    ``fetch_all`` asks for every one, as Nix does. ``roots`` may be a function that evaluates
    them: it runs in a thread while the sessions to the stores open.
    """
    # Every remote build borrows a local session to send inputs and fetch outputs.
    sessions = (
        2 + sum(m.max_jobs for m in pool.machines) + (pool.local.max_jobs if pool.local else 0)
    )
    down = set(backoff or {})
    async with (
        # The local store sees the run's --options (substituters, require-sigs...) as Nix would.
        LocalLink(max_sessions=sessions, env=pool.local_env()) as local_link,
        pool_members(pool, local_link, env) as members,
    ):
        remote = {m.spec.name: m.link for m in members if m.remote and m.spec.name not in down}
        unreachable: dict[str, str] = {}
        # Once a builder answers, sessions for its other slots open while the graph is read,
        # so its first builds do not each wait for a remote nix-store to start.
        slot_counts = {m.spec.name: m.spec.slots for m in members}
        warming: list[asyncio.Task[None]] = []

        def warm(name: str) -> None:
            link = remote[name]
            if isinstance(link, MachineLink):
                warming.append(asyncio.create_task(link.warm(slot_counts[name])))

        try:
            async with contextlib.AsyncExitStack() as opened:
                local, clients, roots = await _open_sessions(
                    opened, local_link, remote, unreachable, roots, answered=warm
                )
                graph = await load_graph(
                    local, roots, remotes=clients, substitute=pool.local_substitutes
                )
                fetched = _report_substituted(graph, emit)
                fetched += await _fetch_existing(graph, clients, local, emit)
                plan, estimates = await _estimated_plan(graph, local, estimate)
            # The sessions just opened reported each builder's load: busy ones get fewer slots.
            loaded = _under_load(members, emit)
            executor = Executor(
                plan,
                loaded,
                local_link,
                emit=emit,
                log_sink=log_sink,
                keep_going=keep_going,
                estimates=estimates,
                outputs=tuple(path for path, _ in out_links(roots, graph, "result")),
                home=None if fetch_all else {drv for drv, _ in roots},
                slots=slots,
                backoff=backoff,
                unreachable=unreachable,
            )
            report = await executor.run()
        finally:
            await _stop_all(warming)
    report.finished[:0] = fetched
    return report, graph


def _under_load(members: list[PoolMember], emit: Callable[[Event], None]) -> list[PoolMember]:
    """``members`` with the builders' slots cut by the load their links reported (offload.load),
    each cut told as a "loaded" MachineEvent."""
    loads = {
        m.spec.name: m.link.load
        for m in members
        if m.remote and isinstance(m.link, MachineLink) and m.link.load is not None
    }
    cut = loaded_specs([m.spec for m in members if m.remote], loads, _local_boot_id())
    result = []
    for member in members:
        spec = cut.get(member.spec.name) if member.remote else None
        if spec is None:
            result.append(member)
            continue
        load = loads[spec.name]
        emit(
            MachineEvent(
                machine=spec.name,
                state="loaded",
                message=f"{load.describe()}: {spec.slots} of {member.spec.slots} slots",
                until=None,
                time=time.time(),
                slots=spec.slots,
            )
        )
        result.append(dataclasses.replace(member, spec=spec))
    return result


def _local_boot_id() -> str | None:
    """This machine's boot id, to tell builders that share its kernel (offload.load)."""
    try:
        return Path(BOOT_ID_FILE).read_text().strip().lower() or None
    except OSError:
        return None


async def _estimated_plan(
    graph: DrvGraph,
    local: ServeClient,
    estimate: Callable[[Iterable[str]], Mapping[str, float]] | None,
) -> tuple[BuildPlan, Mapping[str, float]]:
    """The plan for ``graph`` and history's estimates (speed-1 seconds by name without
    version); the sources of the builds history does not know are sized, as a hint for their
    guessed durations (``offload.scheduler.run.size_factor``)."""
    pnames = {d: split_name_version(graph.drvs[d].name)[0] for d in graph.order}
    estimates = estimate(set(pnames.values())) if estimate is not None else {}
    sources = {
        src
        for d, pname in pnames.items()
        if pname not in estimates
        for src in graph.drvs[d].input_srcs
    }
    infos = await local.query_path_infos(sources) if sources else {}
    return build_plan(graph, {path: info.nar_size for path, info in infos.items()}), estimates


async def _open_sessions(
    stack: contextlib.AsyncExitStack,
    local_link: MemberLink,
    remote: Mapping[str, MemberLink],
    unreachable: dict[str, str],
    roots: Roots,
    *,
    answered: Callable[[str], None] | None = None,
) -> tuple[ServeClient, dict[str, ServeClient], list[tuple[str, str]]]:
    """A local session, one on each builder that answers, and the evaluated roots, all at
    once: ssh handshakes are most of a run's start-up, and evaluation can run meanwhile.

    What opened is closed by ``stack``; an evaluation error wins over a local store error.
    """
    evaluated = asyncio.to_thread(_as_list, roots) if callable(roots) else _ready(list(roots))
    local, clients, result = await asyncio.gather(
        stack.enter_async_context(local_link.session()),
        stack.enter_async_context(_borrow_all(remote, unreachable, answered)),
        evaluated,
        return_exceptions=True,
    )
    for outcome in (result, local, clients):
        if isinstance(outcome, BaseException):
            raise outcome
    assert isinstance(local, ServeClient)
    assert isinstance(clients, dict)
    assert isinstance(result, list)
    return local, clients, result


async def _stop_all(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _ready(roots: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return roots


def _as_list(evaluate: Callable[[], Sequence[tuple[str, str]]]) -> list[tuple[str, str]]:
    return list(evaluate())


@contextlib.asynccontextmanager
async def _borrow_all(
    links: Mapping[str, MemberLink],
    unreachable: dict[str, str],
    answered: Callable[[str], None] | None = None,
) -> AsyncIterator[dict[str, ServeClient]]:
    """A session on each builder that answers, opened in parallel; the others are left out
    and their errors put in ``unreachable``. ``answered(name)`` is told of each as it opens."""
    managers = {name: link.session() for name, link in links.items()}

    async def enter(name: str, cm: AbstractAsyncContextManager[ServeClient]) -> ServeClient:
        client = await cm.__aenter__()
        if answered is not None:
            answered(name)
        return client

    entered = await asyncio.gather(
        *(enter(name, cm) for name, cm in managers.items()), return_exceptions=True
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


def _report_substituted(graph: DrvGraph, emit: Callable[[Event], None]) -> list[JobFinished]:
    """A finished job on the local machine for each derivation its binary caches provided.

    No bytes are counted: they came from the cache into the store, not through offload.
    """
    done: list[JobFinished] = []
    for drv_path, sub in sorted(graph.substituted.items(), key=lambda item: item[1].started):
        event = JobFinished(
            drv_path=drv_path,
            name=graph.drvs[drv_path].name,
            machine=LOCAL,
            status="substituted",
            started=sub.started,
            finished=sub.finished,
            bytes_sent=0,
            bytes_received=0,
            error=None,
            time=sub.finished,
        )
        done.append(event)
        emit(event)
    return done


async def dry_run(
    roots: Sequence[tuple[str, str]],
    pool: Pool,
    estimate: Callable[[Iterable[str]], Mapping[str, float]] | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[DrvGraph, SimResult, dict[str, str]]:
    """What a run would fetch from builders, build and where, planned without building.

    Builders are asked which needed outputs they hold, as a run asks them; the ones that do not
    answer are left out of the plan and returned with their errors. Binary caches are not asked
    (that would download): what they may have is counted as to be built.
    """
    unreachable: dict[str, str] = {}
    async with (
        LocalLink(max_sessions=1, env=pool.local_env()) as local_link,
        pool_members(pool, local_link, env) as members,
        contextlib.AsyncExitStack() as opened,
    ):
        remote = {m.spec.name: m.link for m in members if m.remote}
        local, clients, _ = await _open_sessions(opened, local_link, remote, unreachable, roots)
        graph = await load_graph(local, roots, remotes=clients)
        plan, estimates = await _estimated_plan(graph, local, estimate)
    jobs = plan_jobs(plan, estimates)
    specs = [spec for spec in pool_specs(pool) if spec.name not in unreachable]
    if not specs:
        raise SchedulerError("no machine to build on", hint="pass -j N or --builders")
    return graph, simulate(jobs, specs, strict=False), unreachable


def out_links(
    roots: Iterable[tuple[str, str]], graph: DrvGraph, base: str
) -> list[tuple[str, str]]:
    """(output path, link) pairs named as nix-build names them: result, result-2, result-dev."""
    roots = list(roots)
    return [
        (graph.output_path(drv, output), link)
        for (drv, output), link in zip(roots, result_links(roots, base), strict=True)
    ]
