"""One hook's requests answered: decide, and for an accepted one build it and exit.

For each ``try`` the decision (``offload.hook.decide``) is made from state shared with every
other hook and ``offload build`` run: slot locks, the backoff file and one history query. To
accept, a slot lock of the chosen builder is taken (Nix's own ``current-load`` file, with the
build's expected end written in it) and a session there holding one of the builder's own slots
is made ready (``offload.hook.links``: one kept from an earlier build when there is one); only
then does the hook say ``# accept``, as build-remote connects before it accepts. A builder
that cannot be reached is backed off (remembered in ``backoff.json``, with why, by every later
hook and run) and the decision is made again without it, so a dead builder costs one connect
timeout per back-off period, not one per derivation (nix#13513). Backed-off builders left out
are said in the build log, and a derivation only they could build tries one once more or is
declined, never left waiting on their backoff (``offload.hook.backed_off``). A builder whose
own slots are all held (by other clients, on any host) is decided again as full: the
coordinator then accepts and waits for a slot there or elsewhere, a lone hook picks another
builder or postpones.

Once accepted, Nix cares only that the outputs end up in the local store, not where they were
built (nor can it take the derivation back: it holds the outputs' locks, so the local machine
is no longer a place to build it). So in the coordinator an accepted derivation whose builder
turns out full, or goes away, waits in the dispatch again and is placed where it is expected
to finish first, a full builder's wait taken by the rent-or-buy rule (``offload.hook.full``);
a build placed on another builder than the one named in the accept (or last placed on) says
so in its log, with why. After the build the hook is done: Nix starts a new one for the next
derivation.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator

from offload.config.machines import Machine
from offload.errors import OffloadError
from offload.hook.backed_off import given_up, say_declined, say_left_out, say_unfit, to_retry
from offload.hook.build_one import Lost, build_on, record_build
from offload.hook.context import Estimate, HookContext, poll_interval
from offload.hook.decide import Choice, LocalOffer, choose, may_queue, place_queued
from offload.hook.dispatch import Placement
from offload.hook.full import MOVED_NOTE, WAIT_NOTE, FullBuilders
from offload.hook.guard import Guard
from offload.hook.links import BuilderFullError, Unreachable
from offload.hook.remote import Outcome, error_message, log_writer
from offload.hook.wire import Accepted, Reply, TryRequest, read_accepted, write_reply
from offload.protocol.wire import ByteReader
from offload.slots import slot_key
from offload.store.path import STORE_DIR

__all__ = ["answer"]

# Decisions made again after a lost race for a slot or a builder that did not answer.
_MAX_ATTEMPTS = 8


def _full(context: HookContext, found: set[str], now: float) -> dict[str, float | None]:
    """The builders taken for full: those this hook found so (since now in the coordinator,
    since an unknown time in a lone hook) and those the coordinator knows."""
    full = context.keep.full
    if full is None:
        return dict.fromkeys(found)
    return {**dict.fromkeys(found, now), **full.since()}


def _decide(
    context: HookContext,
    request: TryRequest,
    estimate: Estimate,
    full: set[str],
    retry: set[str],
    *,
    priority: float,
) -> Choice:
    now = time.time()
    builders = context.builders(now, full=_full(context, full, now), retry=retry)
    dispatch = context.keep.dispatch
    if dispatch is not None:
        # The waiting derivations of its priority or more take their slots before it would.
        builders = place_queued(builders, dispatch.queued(above=priority), now)
    work = estimate.work
    if not builders and context.faults_here:  # not "no builders are configured"
        why = next(iter(context.faults_here.values()))
        return Choice(Reply.DECLINE_PERMANENTLY, reason=f"no builder can be reached: {why}")
    return choose(
        request,
        builders,
        context.local_offer(request, now),
        work=work,
        now=now,
        poll_interval=poll_interval(context.settings),
        queue=dispatch is not None and may_queue(len(dispatch.queued()), builders),
        # Only the coordinator sees a nix-build's every derivation (``offload.hook.slack``).
        room=None
        if dispatch is None
        else context.room(request, work, priority, now, measured=estimate.measured),
        prefer_local=estimate.prefer_local,
    )


def _pick(
    context: HookContext,
    request: TryRequest,
    work: float,
    ahead: tuple[float, ...],
    *,
    excluded: set[str],
    tried: set[str],
) -> Placement | None:
    """For an accepted derivation waiting in the dispatch: the slot to take now, if any.
    ``ahead``: the works of the waiters that take a slot before this one (``dispatch``).
    When only backed-off builders could build it, one is taken up out of turn (``tried``: those
    so far, each once; one that fails is ``excluded``, and backed off), and once none is left
    the build fails (``backed_off.given_up``): accepted, it can be neither declined nor left
    waiting out a backoff."""
    now = time.time()
    unable = LocalOffer(1.0, can_build=False)  # accepted: Nix will not build it here
    # A builder another derivation found dead while this one waited is backed off in the
    # file only: without it, this one would wait on for that builder's slot.
    # (Also `offload machines --reset`, or another run's success, meanwhile.)
    context.reload_backoff()
    # And the builders `offload use` chooses now: one left out meanwhile gets no more builds.
    context.reload_choice(request)
    while True:
        # One tried here but failed since for another of this client's derivations is not.
        retry = {name for name in tried if not context.failed_for_client(name)}
        builders = context.builders(now, excluded, full=_full(context, set(), now), retry=retry)
        builders = place_queued(builders, ahead, now)
        choice = choose(request, builders, unable, work=work, now=now, queue=True)
        if not choice.stuck:
            break
        again = to_retry(context, request, choice, tried)
        if again is None:
            raise given_up(context, request, (*choice.backed_off, *sorted(excluded)))
        tried.add(again)
    if choice.reply is not Reply.ACCEPT:  # nowhere to build it: declined (Nix cannot take it)
        if excluded:  # each failed for it, and is backed off
            raise given_up(context, request, sorted(excluded))
        raise OffloadError(f"no builder is left to build {request.drv_path} ({choice.reason})")
    if choice.waits:
        return None
    machine = context.machine(str(choice.machine))
    until = choice.expected_end
    fd = context.slots.try_acquire(
        slot_key(machine.uri), machine.max_jobs, until=until, drv=request.name
    )
    return None if fd is None else Placement(machine.name, fd, until or now)


@contextlib.asynccontextmanager
async def _slot(context: HookContext, choice: Choice, drv: str) -> AsyncIterator[bool]:
    """Hold a slot of the chosen builder for the body; yields False if all were taken."""
    machine = context.machine(str(choice.machine))
    fd = context.slots.try_acquire(
        slot_key(machine.uri), machine.max_jobs, until=choice.expected_end, drv=drv
    )
    if fd is not None:
        context.keep.took(machine.name)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)
            context.keep.released(machine.name)


async def answer(
    context: HookContext,
    reader: ByteReader,
    request: TryRequest,
    *,
    guarded: bool,
) -> int | None:
    """Reply to ``request``; after an accepted build, the hook's exit code (else None).

    ``guarded``: this process may be killed without warning mid-build (it is the hook process
    itself), so a guard must be ready to clean up after it.
    """
    if context.left_to_nix(request):  # declined
        return None
    full: set[str] = set()  # every slot held on the builder itself, by others
    retry: set[str] = set()  # backed off, but tried now: nothing else can build it
    tried: set[str] = set()  # tried so here (once each, even were no marker to be made)
    estimate = context.estimate(request)
    work = estimate.work
    priority = work if context.keep.dispatch is None else context.priority(request, work)
    context.reload_backoff()
    for _ in range(_MAX_ATTEMPTS):
        choice = _decide(context, request, estimate, full, retry, priority=priority)
        context.say(f"{request.drv_path}: {choice.reply.value} ({choice.reason})", level=4)
        say_left_out(context, choice)
        say_unfit(context, request, choice)
        if choice.stuck and (again := to_retry(context, request, choice, tried)) is not None:
            retry.add(again)
            tried.add(again)
            continue
        if choice.stuck:
            say_declined(context, request, choice)
        if choice.reply is not Reply.ACCEPT or (choice.waits and choice.machine in retry):
            # A builder tried out of turn is taken only with a slot free now: were its slots
            # held here, Nix asks again after its poll interval.
            reply = Reply.POSTPONE if choice.reply is Reply.ACCEPT else choice.reply
            if reply is Reply.DECLINE and choice.expected_end is not None:
                context.declined(request, choice.expected_end, tail=priority - work)
            write_reply(context.io, reply)
            return None
        name = str(choice.machine)
        with context.building(request, choice.expected_end, tail=priority - work):
            if choice.waits:
                full_now = name in _full(context, full, 0.0)
                return await _accept_and_wait(
                    context, reader, request, name, work, found_full=full_now
                )
            code = await _accept_in_slot(context, reader, request, choice, work, guarded=guarded)
            if isinstance(code, int):
                return code
            if isinstance(code, Unreachable):
                # Backed off from now on: the next decision leaves it out, as it says why.
                await context.unreachable(name, code.reason)
                retry.discard(name)
            elif isinstance(code, BuilderFullError):
                full.add(name)  # not yet accepted: Nix waits for this reply: decide again
    write_reply(context.io, Reply.POSTPONE)
    return None


async def _accept_in_slot(
    context: HookContext,
    reader: ByteReader,
    request: TryRequest,
    choice: Choice,
    work: float,
    *,
    guarded: bool,
) -> int | Unreachable | BuilderFullError | None:
    """Accept and build on ``choice``'s builder with its slot here held: the exit code, or
    why to decide again (None: another process took the slot since the probe). A builder lost
    mid-build lets its slot here go before the build waits for one elsewhere: held on, it
    read busy, to this host's other clients too, for as long as that build took."""
    name = str(choice.machine)
    async with _slot(context, choice, request.name) as held:
        if not held:
            return None
        try:
            return await _accept(context, reader, request, name, guarded=guarded)
        except (Unreachable, BuilderFullError) as exc:
            return exc
        except Lost as exc:
            lost = exc
    # Only the coordinator goes on: accepted already, but Nix cares not where it builds;
    # there again if the builder, reconnected meanwhile, answered.
    assert lost.accepted is not None
    excluded = set() if await _reconnected(context, lost, name, request) else {name}
    return await _build_where_a_slot_frees(
        context, request, lost.accepted, work, excluded=excluded, origin=name
    )


async def _accept(
    context: HookContext,
    reader: ByteReader,
    request: TryRequest,
    name: str,
    *,
    guarded: bool,
) -> int:
    machine = context.machine(name)
    accepted = None
    since = time.time()
    try:
        async with context.keep.links.session(
            machine, context.env, log_writer(context.io)
        ) as session:
            context.machine_ok(name)
            write_reply(context.io, Reply.ACCEPT, machine.uri)
            accepted = await read_accepted(reader)
            guard = None
            if guarded:
                pid = session.remote_pid
                kill = (
                    session.transport.kill_argv(pid, session.remote_born)
                    if pid is not None
                    else ["true"]
                )
                guard = Guard(STORE_DIR, kill)
            try:
                outcome = await build_on(
                    context, session.client, request, accepted, name, waited_since=since
                )
            finally:
                if guard is not None:
                    guard.dismiss()
    except Lost as lost:
        lost.accepted = accepted  # built elsewhere once its slot here is let go
        raise
    if outcome is None:
        return 1
    record_build(context, request, name, outcome)
    return outcome.exit_code


async def _accept_and_wait(
    context: HookContext,
    reader: ByteReader,
    request: TryRequest,
    name: str,
    work: float,
    *,
    found_full: bool,
) -> int:
    """Accept for a busy builder (``found_full``: one full of other clients' builds), then
    wait in the dispatch for the slot worth taking."""
    write_reply(context.io, Reply.ACCEPT, context.machine(name).uri)
    accepted = await read_accepted(reader)
    return await _build_where_a_slot_frees(
        context, request, accepted, work, excluded=set(), origin=name, full=found_full
    )


async def _build_where_a_slot_frees(
    context: HookContext,
    request: TryRequest,
    accepted: Accepted,
    work: float,
    *,
    excluded: set[str],
    origin: str,
    full: bool = False,
) -> int:
    """Wait in the dispatch for a slot and build there; a builder that cannot open a session, or
    goes away mid-build, is backed off, one found full (``full``: ``origin``) waited for."""
    builders_full, dispatch = context.keep.full, context.keep.dispatch
    assert builders_full is not None
    assert dispatch is not None
    waiting: list[str] = []  # the full builders this derivation waits for
    said_full: set[str] = set()  # those its log said it waits for
    tried: set[str] = set()  # backed-off builders taken up out of turn (``_pick``)
    turn = dispatch.ticket()  # kept through every wait again: its place among equals
    since = accepted_at = time.time()
    if full:
        _wait_full(context, origin, waiting, said_full)
    try:
        while True:
            placement = await _placement(
                context, request, work, excluded, tried, turn=turn, since=accepted_at
            )
            if placement is None:
                return 1
            why = _why_moved(context, origin, placement.machine, excluded)
            _stop_waiting(builders_full, waiting)
            machine = context.machine(placement.machine)
            context.keep.took(machine.name)
            moved = why and MOVED_NOTE.format(origin=origin, target=machine.name, why=why)
            try:
                outcome = await _built_there(
                    context, machine, request, accepted, since=since, moved=moved
                )
            except BuilderFullError:
                _wait_full(context, machine.name, waiting, said_full)
                origin = machine.name
                continue
            except Unreachable as exc:
                await context.unreachable(machine.name, exc.reason)
                excluded.add(machine.name)
                continue
            except Lost as lost:
                if not await _reconnected(context, lost, machine.name, request):
                    excluded.add(machine.name)
                origin, since = machine.name, time.time()  # its next copy waits from here
                continue
            finally:
                os.close(placement.fd)
                context.keep.released(machine.name)
            if outcome is None:
                return 1
            record_build(context, request, machine.name, outcome)
            return outcome.exit_code
    finally:
        _stop_waiting(builders_full, waiting)


async def _built_there(
    context: HookContext,
    machine: Machine,
    request: TryRequest,
    accepted: Accepted,
    *,
    since: float,
    moved: str | None,
) -> Outcome | None:
    """The derivation built in a session of ``machine`` (a slot there held), waited for since
    ``since``; ``moved``: why it went there, said in its log first."""
    log = log_writer(context.io)
    async with context.keep.links.session(machine, context.env, log) as session:
        context.machine_ok(machine.name)
        if moved:
            log(moved)
        client = session.client
        return await build_on(context, client, request, accepted, machine.name, waited_since=since)


async def _placement(
    context: HookContext,
    request: TryRequest,
    work: float,
    excluded: set[str],
    tried: set[str],
    *,
    turn: int,
    since: float,
) -> Placement | None:
    """The slot the dispatch gives the derivation (``_pick``), waited for since it was
    accepted (``since``, also through a wait again); None when no builder is left to build
    it, said to Nix: accepted, it cannot be declined now, so the build fails."""
    dispatch = context.keep.dispatch
    assert dispatch is not None
    try:
        return await dispatch.take(
            work,
            lambda ahead: _pick(context, request, work, ahead, excluded=excluded, tried=tried),
            priority=context.priority(request, work),
            ticket=turn,
            name=request.name,
            since=since,
        )
    except OffloadError as exc:
        hint = f" ({exc.hint})" if exc.hint else ""
        error_message(context.io, f"offload-hook: {exc.message}{hint}")
        return None


def _stop_waiting(builders_full: FullBuilders, waiting: list[str]) -> None:
    """The derivation waits no more for the full builders in ``waiting`` (now emptied)."""
    for name in waiting:
        builders_full.left(name)
    waiting.clear()


def _wait_full(context: HookContext, name: str, waiting: list[str], said: set[str]) -> None:
    """The derivation found builder ``name`` full: it waits for a slot there or elsewhere,
    said in its log once per builder (``said``), not at each look that found it full."""
    assert context.keep.full is not None
    if name not in said:
        log_writer(context.io)(WAIT_NOTE.format(name=name))
        said.add(name)
    context.keep.full.wait(context.machine(name), context.env, time.time())
    waiting.append(name)


async def _reconnected(context: HookContext, lost: Lost, name: str, request: TryRequest) -> bool:
    """Whether builder ``name``, which ``lost`` the build, answered again
    (``offload.hook.reconnects``): its backoff cleared, the build may go there again. Said
    to the user, who was told it failed and was backed off."""
    if lost.reconnect is None or not await asyncio.shield(lost.reconnect):
        return False
    context.reload_backoff()
    context.say(
        f"builder '{name}' answered again after its connection was lost: its backoff is "
        f"cleared, and '{request.drv_path}' is built again where a slot frees first"
    )
    return True


def _why_moved(context: HookContext, origin: str, target: str, excluded: set[str]) -> str | None:
    """Why a derivation accepted for (or last placed on) ``origin`` is placed on ``target``
    instead; None when it is not moved."""
    if target == origin:
        return None
    if origin in excluded:
        return f"'{origin}' failed"
    if context.whole is not None and all(m.name != origin for m in context.pool.machines):
        return f"`offload use` leaves '{origin}' out now"  # chosen while it waited
    assert context.keep.full is not None
    since = context.keep.full.since().get(origin)
    if since is None:
        return f"a slot on '{target}' freed first"
    return (
        f"every slot on '{origin}' has been held by other clients for "
        f"{time.time() - since:.1f} s, so '{target}' is expected to finish it first (a full "
        "builder is taken to stay full as long again)"
    )
