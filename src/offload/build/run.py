"""One run, start to end: sessions open while the roots are evaluated, the graph is read,
what need not be built is fetched or reported, and the executor builds the rest over the
pool's members; and the links nix-build would name for the requested outputs. At the end the
builders' links close at once, each ending its sessions, remote processes and ssh master.

The local store's Nix speaks while the graph is read too: asked to substitute, it tries its
binary caches, and one it cannot reach costs seconds of retries. What it prints then goes to
stderr as nix-build shows it (``nix_said``; its fatal error once: ``build.nix_said``), so
that wait is explained; a cache it leaves out is told as a "cache" machine event as well
(``caches``): a fault, though the run goes on. So is one a builder's Nix leaves out
(builders-use-substitutes), said in a build's log.

No builder is left out without a word: one that fails to answer is told as a machine "down"
event with why, in the user's words and with the fix (``faults``); one still silent
``SLOW_GRACE`` seconds after the run could start is told as "slow", and the run starts
without it: it joins when it answers (``sessions``). Where every requested output is valid
here already, none is waited for, nor said to be slow, down or backed off (nor backed off):
nothing is to be built, and nix-build says nothing of its builders then.

A run's first event is its ``RunStarted`` (machines, estimate), whoever tells what comes
before the executor starts (a slow or restricted builder, outputs substituted or fetched):
those are held until it and told just after it, in their order (``_in_order``), and it
counts the outputs settled before it (``ready``). A run that never starts (an error, Ctrl-C
while the graph is read) still tells what it held, as it ends. Its ``RunFinished`` is its
last event: it is held until the builders' links have closed, and what they tell as they
close (a build they could not stop) goes before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import sys
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from offload.backoff import Health
from offload.build.caches import CacheFaults
from offload.build.faults import explain
from offload.build.graph import DrvGraph, Roots, all_valid, check_impossible, load_graph
from offload.build.members import (
    follow_loads,
    no_machine_error,
    pool_members,
    tell_missing_keys,
    tell_restricted,
    tell_unstopped,
)
from offload.build.nix_said import heard
from offload.build.plan import estimated_plan
from offload.build.prebuilt import FetchFailed, fetch_existing, report_substituted
from offload.build.sessions import open_sessions, warming
from offload.config.pool import Pool
from offload.errors import SchedulerError
from offload.load import local_boot_id
from offload.marks import mark
from offload.names import LOCAL
from offload.nix_results import result_links
from offload.protocol.serve import BuildOptions, StoreClient
from offload.scheduler.run import BuildPlan, Executor, MemberLink, PoolMember, RunReport
from offload.scheduler.run.copy import AfterHome, cleared_cut
from offload.slots import SlotLocks
from offload.tasks import cancel_and_wait
from offload.transport.links import LocalLink
from offload.ui.events import Event, JobFinished, MachineEvent, RunFinished, RunStarted

__all__ = ["SLOW_GRACE", "out_links", "run_build"]

# Seconds a builder may stay silent, once the graph could be read, before the run starts
# without it. A healthy one answers well within: its connect began with the evaluation.
SLOW_GRACE = 1.5


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
    earlier_failures: Mapping[str, int] | None = None,  # counted by earlier runs (backoff)
    fetch_all: bool = False,
    options: BuildOptions | None = None,  # Nix's timeouts and log limit, sent with each build
    fallbacks: Path | None = None,  # where what was learned of builder-side slots is kept
    shared: Path | None = None,  # the persistent masters' directory (``transport.persist``)
    cut_short: Callable[[RunReport, DrvGraph], None] | None = None,
    check: bool = False,  # nix-build --check: a root to be built is refused, nothing built
    nix_said: Callable[[str], None] | None = None,  # default: the local store's lines, stderr
    after_home: AfterHome | None = None,  # run once a build's outputs are here (post_hook)
) -> tuple[RunReport, DrvGraph]:
    """Build what ``roots`` need over ``pool`` (or a function evaluating them, run in a thread
    as the sessions open). On success their outputs are valid here, the others where they
    were built unless needed here or ``fetch_all`` (``after_home``: Nix's post-build-hook).
    Stopped (Ctrl-C, SIGTERM) or stranded, the run tells ``cut_short`` what it built so far
    (``interrupted``, ``stranded``: still worth keeping) before the exception goes on."""
    late: dict[str, asyncio.Task[None]] = {}
    async with (
        _in_order(emit) as told,  # the run's first event first, its last one last
        # The local store sees the run's --options (substituters, require-sigs...) as Nix would.
        LocalLink(max_sessions=_local_sessions(pool), env=pool.local_env()) as local_link,
        pool_members(pool, local_link, env, fallbacks, shared) as members,
    ):
        _tell_refused(pool, members, told)
        remote = _remote(members, backoff or {})
        unreachable, local_faults = dict[str, str](), set[str]()  # left out (why; this host's)
        caches = CacheFaults(told, {LOCAL: pool.nix_settings.words("substituters")})
        async with (
            warming(remote, {m.spec.name: m.spec.slots for m in members}) as warm,
            _owning(late),
        ):
            roots, graph, plan, estimates, fetched, settled = await _plan(
                pool, local_link, remote, roots,
                unreachable=unreachable, local_faults=local_faults, warm=warm, late=late,
                emit=told, estimate=estimate, check=check, nix_said=nix_said, caches=caches,
            )  # fmt: skip
            reached = remote.keys() - unreachable.keys()
            _opening(pool, members, plan, reached, late=late, told=told, settled=settled)
            executor = Executor(
                plan, members, local_link, emit=caches.emit, log_sink=_reading(caches, log_sink),
                estimates=estimates, unreachable=unreachable, earlier_failures=earlier_failures,
                backoff=None if settled else backoff, slots=slots,  # no builder needed: none told
                outputs=tuple(path for path, _ in out_links(roots, graph, "result")), joining=late,
                home=None if fetch_all else {drv for drv, _ in roots}, explain=_explainer(pool),
                build_options=options, local_boot_id=local_boot_id(), keep_going=keep_going,
                after_home=after_home, faults_here=local_faults, stranded_hint=pool.stranded_hint(),
            )  # fmt: skip
            follow_loads(members, executor.loads.reported)  # busy builders get fewer slots
            report = await _carried_out(executor, graph, fetched, cut_short)
    return report, graph


def _tell_refused(pool: Pool, members: list[PoolMember], told: Callable[[Event], None]) -> None:
    """What an earlier run could not stop (``tell_unstopped``), and each builder of the
    machines given that offload never connects to (``not_connected``: a name ssh would read
    as an option, a pinned key of no ssh key), told down with why, as one that did not answer
    is: in --json and the summary, not only in a warning at the start."""
    tell_unstopped(members, told)
    for machine in pool.refused:
        why = f"{machine.not_connected}: offload does not connect to it ({machine.source})"
        told(MachineEvent(machine.name, "down", why, until=None, time=time.time()))


def _opening(
    pool: Pool,
    members: list[PoolMember],
    plan: BuildPlan,
    reached: Collection[str],
    *,
    late: Mapping[str, asyncio.Task[None]],
    told: Callable[[Event], None],
    settled: bool,
) -> None:
    """Before the executor starts: no machine at all for work (-j 0 and no builder: fine
    while all is valid), and what the builders' logins showed, unless nothing was to be
    built (``settled``: nothing is said of the builders then)."""
    if not members and plan.order:
        raise no_machine_error(pool)
    if not settled:
        _tell_logins(pool, members, reached, late, told)


def _tell_logins(
    pool: Pool,
    members: list[PoolMember],
    reached: Collection[str],
    late: Mapping[str, asyncio.Task[None]],
    told: Callable[[Event], None],
) -> None:
    """What the builders' logins showed: restricted keys, and key files that do not exist
    (``reached``: the builders that logged in or are still connecting, ``late``; one of those
    is told once it answers, or down, with why, if it fails)."""
    tell_restricted(members, told)
    tell_missing_keys(pool, reached - late.keys(), told)
    for name, joining in late.items():
        joining.add_done_callback(functools.partial(_answered_late, pool, name, told))


def _answered_late(
    pool: Pool, name: str, told: Callable[[Event], None], joining: asyncio.Task[None]
) -> None:
    if not joining.cancelled() and joining.exception() is None:
        tell_missing_keys(pool, [name], told)


def _explainer(pool: Pool) -> Callable[[str, str], str]:
    """Why the machine named cannot be used, from its link's error, and the fix; the local
    machine's error (no machines line to fix) as it is."""
    machines = {m.name: m for m in pool.machines}
    return lambda name, error: explain(machines[name], error) if name in machines else error


async def _carried_out(
    executor: Executor,
    graph: DrvGraph,
    fetched: list[JobFinished],
    cut_short: Callable[[RunReport, DrvGraph], None] | None,
) -> RunReport:
    """The executor's run, the outputs fetched instead of built first in its report; stopped
    by Ctrl-C or a signal, or stranded with no machine left, that report so far goes to
    ``cut_short`` before the stop goes on."""
    try:
        report = await executor.run()
    except (asyncio.CancelledError, KeyboardInterrupt, SchedulerError) as exc:
        # Stopped (Ctrl-C, SIGTERM) or stranded: what ran is kept. Any other error of the
        # run's own is neither, and its report may not have been made whole.
        kept = executor.report.stranded or not isinstance(exc, SchedulerError)
        if cut_short is not None and kept:
            executor.report.finished[:0] = fetched
            cut_short(executor.report, graph)
        raise
    report.finished[:0] = fetched
    return report


async def _plan(
    pool: Pool,
    local_link: LocalLink,
    remote: Mapping[str, MemberLink],
    roots: Roots,
    *,
    unreachable: dict[str, str],
    local_faults: set[str],
    warm: Callable[[str], None],
    late: dict[str, asyncio.Task[None]],
    emit: Callable[[Event], None],
    estimate: Callable[[Iterable[str]], Mapping[str, float]] | None,
    check: bool,
    nix_said: Callable[[str], None] | None,  # None: stderr
    caches: CacheFaults,
) -> _Planned:
    """Open the first sessions while ``roots`` evaluate, read the graph, take what the local
    caches and the builders already have, and plan the rest; the sessions close after it.
    What the local store prints meanwhile goes to ``nix_said``. Where every requested output
    is valid here (``settled``), no builder was needed: none that failed is said or kept
    down (``unreachable`` emptied), as nix-build says nothing of its builders then."""
    async with contextlib.AsyncExitStack() as opened:
        local, clients, evaluated, settled = await open_sessions(
            opened,
            local_link,
            remote,
            unreachable,
            roots,
            answered=warm,
            late=late,
            grace=SLOW_GRACE,
            settled=all_valid,
            faults_here=local_faults,
        )
        said = nix_said or _to_stderr
        opened.enter_context(heard(local, said, functools.partial(caches.heard, LOCAL)))
        mark("answered")
        if not settled:  # else not waited for, and not needed
            _tell_slow(late, emit, elsewhere=bool(clients) or pool.local is not None)
        graph, fetched = await _existing(
            local, local_link, evaluated, clients, unreachable=unreachable, pool=pool, emit=emit,
            slow_caches=_slow_caches(said),
        )  # fmt: skip
        mark("graph")
        # Every requested output valid here, found before the builders were all waited for or
        # after (one that fails at once, unasked: a laptop's builder away), as the graph says.
        settled = settled or not (graph.order or fetched)
        if settled:
            unreachable.clear()
        refused = check_impossible(graph) if check else None
        if refused is not None:
            raise refused
        plan, estimates = await estimated_plan(graph, local, estimate)
        mark("planned")
    return _Planned(evaluated, graph, plan, estimates, fetched, settled)


class _Planned(NamedTuple):
    roots: list[tuple[str, str]]  # evaluated
    graph: DrvGraph
    plan: BuildPlan
    estimates: Mapping[str, float]
    fetched: list[JobFinished]  # outputs fetched or substituted instead of built
    settled: bool  # every requested output was valid here: no builder was needed


async def _existing(
    local: StoreClient,
    local_link: LocalLink,
    roots: Sequence[tuple[str, str]],
    clients: dict[str, StoreClient],
    *,
    unreachable: dict[str, str],
    pool: Pool,
    emit: Callable[[Event], None],
    slow_caches: Callable[[int], None] | None = None,
) -> tuple[DrvGraph, list[JobFinished]]:
    """The graph, and what the local caches and the builders already hold of it, fetched. A
    builder that fails meanwhile is left out (``unreachable``, said and backed off as one that
    did not answer) and the graph is read again without it: what it held is built."""
    fetched: list[JobFinished] = []
    while True:
        graph = await load_graph(
            local, roots, remotes=clients, substitute=pool.local_substitutes,
            always_substitute=pool.always_substitutes,
            failed=unreachable, slow_caches=slow_caches,
        )  # fmt: skip
        for name in unreachable:
            clients.pop(name, None)
        fetched += report_substituted(graph, emit)
        said = ""
        try:
            if graph.fetch:
                # A session of their own: a copy cut off (a builder gone, a NAR not as it
                # said) leaves it unusable, and the graph is read again on ``local``.
                async with local_link.session() as fetching:
                    try:
                        fetched += await fetch_existing(graph, clients, fetching, emit)
                    except FetchFailed as exc:
                        if exc.partial:  # what it left half-written here goes
                            cleanup = await cleared_cut(
                                local_link, fetching, exc.partial, "outputs"
                            )
                            said = cleanup.said
                        raise
        except FetchFailed as exc:
            if exc.down:
                unreachable[exc.machine] = exc.message + said
            clients.pop(exc.machine)
            continue
        return graph, fetched


def _reading(
    caches: CacheFaults, sink: Callable[[str, str, str], None] | None
) -> Callable[[str, str, str], None]:
    """``sink`` for the builds' log lines, each read by ``caches`` first: a builder's Nix (with
    builders-use-substitutes) or the local one says there a cache it left out."""

    def read(drv_path: str, machine: str, line: str) -> None:
        caches.build_log(drv_path, machine, line)
        if sink is not None:
            sink(drv_path, machine, line)

    return read


def _slow_caches(said: Callable[[str], None]) -> Callable[[int], None]:
    """Says once a run that the local binary caches are slow to answer: they are fetching
    (``offload.build.graph``), and the run starts once they are done."""
    told = False

    def slow(asked: int) -> None:
        nonlocal told
        if not told:
            told = True
            said(
                f"offload: waiting for the binary caches, asked for {asked} path(s): the local "
                "store fetches what they have before the builds start, and says nothing meanwhile"
            )

    return slow


def _to_stderr(line: str) -> None:
    # As the evaluator's warnings are (``offload.nix``): on stderr whatever the renderer, so
    # --json's stdout stays events only.
    sys.stderr.write(line + "\n")


def _remote(members: Iterable[PoolMember], down: Mapping[str, Health]) -> dict[str, MemberLink]:
    """The builders' links, but those backed off (``down``)."""
    return {m.spec.name: m.link for m in members if m.remote and m.spec.name not in down}


@contextlib.asynccontextmanager
async def _in_order(emit: Callable[[Event], None]) -> AsyncIterator[Callable[[Event], None]]:
    """``emit`` with the run's ``RunStarted`` first: what is told before it is held, then told
    just after it (a program reading ``--json`` takes a run's first event to open it); what
    is held when the run ends without one is told then. Its ``RunFinished`` is held to the
    end, after all else (a program takes it to close the run)."""
    held: list[Event] | None = []
    last: list[RunFinished] = []

    def told(event: Event) -> None:
        nonlocal held
        if isinstance(event, RunFinished):
            last.append(event)
        elif held is None:
            emit(event)
        elif isinstance(event, RunStarted):
            before, held = held, None
            ready = sum(isinstance(e, JobFinished) for e in before)  # fetched, substituted
            emit(dataclasses.replace(event, ready=ready))
            for event_before in before:
                emit(event_before)
        else:
            held.append(event)

    try:
        yield told
    finally:
        # The end's time is when it is told, after the others: a view that prints times
        # shows them in order.
        ended = [dataclasses.replace(e, time=max(e.time, time.time())) for e in last]
        for event in [*(held or ()), *ended]:
            emit(event)


@contextlib.asynccontextmanager
async def _owning(tasks: dict[str, asyncio.Task[None]]) -> AsyncIterator[None]:
    """Builders still connecting when the run ends early are stopped (the executor, once it
    runs, takes them on and stops them itself)."""
    try:
        yield
    finally:
        await cancel_and_wait(tasks.values())


def _tell_slow(late: Collection[str], emit: Callable[[Event], None], *, elsewhere: bool) -> None:
    """Each builder still silent, said slow; ``elsewhere``: another machine builds meanwhile
    (else the run waits for it: `-j 0` and no other builder, a tester read "elsewhere")."""
    meanwhile = "building elsewhere meanwhile" if elsewhere else "no other machine to build on"
    for name in late:
        emit(
            MachineEvent(
                machine=name,
                state="slow",
                message=f"no answer yet: {meanwhile}; it joins when it answers",
                until=None,
                time=time.time(),
            )
        )


def _local_sessions(pool: Pool) -> int:
    # Every remote build borrows a local session to send inputs and fetch outputs.
    return 2 + sum(m.max_jobs for m in pool.machines) + (pool.local.max_jobs if pool.local else 0)


def out_links(
    roots: Iterable[tuple[str, str]], graph: DrvGraph, base: str
) -> list[tuple[str, str]]:
    """(output path, link) pairs named as nix-build names them: result, result-2, result-dev."""
    roots = list(roots)
    return [
        (graph.output_path(drv, output), link)
        for (drv, output), link in zip(roots, result_links(roots, base), strict=True)
    ]
