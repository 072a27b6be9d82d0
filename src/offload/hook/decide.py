"""What the hook answers to one ``try``: the policy's placement rule for a single derivation.

Nix asks about one derivation at a time, so the whole-graph parts of the policy (holds for
coming work, speculation) have nothing to work on here, and of critical paths only what
history saw after a derivation's name (``history.tails``), which orders the coordinator's
waiting derivations (``offload.hook.dispatch``) and gives slack (``offload.hook.slack``: side
work takes the slowest free machine that still ends it in time, ``room``); what remains is the
placement rule of ``offload.scheduler.policy``: a derivation goes where it is expected to
*finish* first. The candidates are the local machine, when Nix is willing to build it here
and it can (system and features, as ``canBuildLocally``), and every builder that may build it
(``can_build``: Nix's own matching) and is not backed off. A builder's start is now when one
of its slots is free (counted with Nix's own ``current-load`` locks, so other hooks, Nix's
stock hook and ``offload build`` runs are all seen), else the earliest expected end among its
held slots (written into the slot files by offload; a slot held by Nix's stock hook says
nothing and is assumed to end after a default build). Its finish adds a fixed remote overhead
(copying inputs and outputs, a session) to ``work / speed``.

A builder loaded with other people's work has fewer usable slots (``cut``: the coordinator
follows its load, ``offload.hook.loads``): the free ones go first, then the held ones that end
first, each of those paying for one slot cut while it was busy, as ``Policy.on_load`` has it
for ``offload build``; so its next start is when enough of its builds have ended.

A builder whose own slots are all held by other clients (on other hosts: this host's locks do
not see them) is *full* (``Builder.full_since``, known in the coordinator,
``offload.hook.full``). How long others keep it is unknown, so its start is taken as
``policy.full``'s rent-or-buy rule has it: it stays full as long again as it has been
(``full_wait``), or until the earliest expected end this host knows of there if that is
sooner (one of this host's own builds there, whose slot its coordinator takes over). So a
derivation waiting for it moves to a free builder once waiting has cost as much as moving, at
once when that builder is no slower (ties go to the free slot), and stays for a slot of ours
there that frees sooner.

The answer:

- a ``preferLocalBuild`` derivation (``writeText``, ``buildEnv``) the local machine can build
  -> ``decline``, whatever the builders, as ``offload build`` places it (``plan_jobs``): Nix
  2.8 asks about one only when the local machine cannot build it (``-j 0``, another system),
  and Nix 2.34 only when it rejects building it here (when no local slot is free it waits for
  one, asking nothing); the later answer is for where offload's view of the local machine
  differs from Nix's;
- the local machine finishes first (ties included: nothing to copy) -> ``decline``, and Nix
  builds it here: a fast local machine is never left idle for a slower builder (nix#2589).
  Nix 2.8 asks about every ready derivation before it starts any local build, saying each
  time that its slot is free; so the hook counts what it has declined to this Nix process
  (``offload.hook.local_queue``) and a local slot frees only after those are expected done;
- a builder with a free slot finishes first -> ``accept`` it;
- a busy builder finishes first -> ``accept`` it in the coordinator, which waits for the slot
  after accepting (``offload.hook.dispatch``; derivations already waiting count as work queued
  there, ``place_queued``); a hook in its own process cannot wait so, and ``postpone``s instead
  when the busy builder still finishes first although Nix asks about a postponed derivation
  again only after its poll interval (``build-poll-interval``, 5 s: Nix 2.8 does not wake it
  sooner), or when nothing else can build it now;
- no builder could ever take it -> ``decline`` (Nix builds it locally or says why it cannot),
  or ``decline-permanently`` when there are no builders at all, as build-remote does;
- every builder that could take it is backed off -> ``decline`` when the local machine builds
  it now, or will once a local slot frees (``LocalOffer.later``) before the first builder is
  back (Nix asks again when a local build ends, not when a backoff does; where that slot's
  end is not known, unless a builder is back within Nix's poll), else ``postpone``; when the
  local machine never builds it, the choice is ``stuck``: only a backed-off builder could
  ever build it here (``-j 0``, or not the local machine's system or features). The caller
  then tries that builder out of turn or declines (``offload.hook.run``). Every choice
  names the fitting builders it left out for their backoff (``backed_off``), for the caller
  to say.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from offload.hook.wire import Reply, TryRequest
from offload.scheduler.policy import MachineSlotSpec, can_build, full_wait

__all__ = [
    "QUEUE_FLOOR",
    "QUEUE_PER_SLOT",
    "Builder",
    "Choice",
    "LocalOffer",
    "choose",
    "cut",
    "may_queue",
    "place_queued",
]

# Copying the inputs and outputs and opening a session over a warm connection: a few round
# trips on each side (docs/BENCHMARKS.md measures about 0.1-0.3 s on loopback).
REMOTE_OVERHEAD = 0.3


@dataclass(frozen=True)
class Builder:
    spec: MachineSlotSpec
    free: int  # slots free right now
    busy_ends: tuple[float | None, ...] = ()  # expected ends of held slots (None: unknown)
    down_until: float | None = None  # backed off until then (wall clock)
    full_since: float | None = None  # every slot on the builder held by others since then


@dataclass(frozen=True)
class LocalOffer:
    speed: float
    can_build: bool  # Nix is willing (a free local slot) and the system and features fit
    # When a local slot frees for it: None is now, or, with ``later``, not known.
    start: float | None = None
    later: bool = False  # not now (no free local slot), but once one frees: it fits here


@dataclass(frozen=True)
class Choice:
    reply: Reply
    machine: str | None = None
    expected_end: float | None = None  # wall clock: of the build where it was placed
    reason: str = ""
    waits: bool = False  # accepted for a builder whose slots are all busy: wait after accepting
    # The builders that fit but were left out for their backoff, the soonest back first.
    backed_off: tuple[str, ...] = ()
    # Declined because only those could ever build it here: neither the local machine (not
    # now, nor once a slot frees) nor any other builder can.
    stuck: bool = False
    unfit: bool = False  # declined: no builder has its system and features


def cut(builder: Builder, slots: int, now: float, default_work: float = 10.0) -> Builder:
    """``builder`` with only ``slots`` of its slots usable (module docstring): its slots held
    on this host beyond that are owed, and the earliest to end pay for them."""
    if slots >= builder.spec.slots:
        return builder
    held = builder.busy_ends
    default_end = now + default_work / builder.spec.speed
    owed = max(0, len(held) - slots)
    ends = sorted(held, key=lambda end: default_end if end is None else max(end, now))[owed:]
    return dataclasses.replace(
        builder,
        spec=dataclasses.replace(builder.spec, slots=slots),
        free=min(builder.free, max(0, slots - len(held))),
        busy_ends=tuple(ends),
    )


def _start(builder: Builder, now: float, default_end: float) -> float:
    if builder.full_since is not None:
        ours = [end for end in builder.busy_ends if end is not None and end > now]
        return min([now + full_wait(builder.full_since, now), *ours])
    if builder.free > 0:
        return now
    ends = [default_end if end is None else max(end, now) for end in builder.busy_ends]
    return min(ends, default=default_end)


def choose(
    request: TryRequest,
    builders: Sequence[Builder],
    local: LocalOffer,
    *,
    work: float,
    now: float,
    poll_interval: float = 5.0,
    default_work: float = 10.0,
    queue: bool = False,
    room: float | None = None,
    prefer_local: bool = False,
) -> Choice:
    """The reply to ``request``; ``work`` is its expected duration on a machine of speed 1.

    ``queue``: the caller can accept now and wait for a busy builder's slot afterwards (the
    coordinator can; a lone hook process cannot), so a busy builder is accepted rather than
    the derivation postponed, and Nix's poll interval does not delay it. ``room``: the latest
    end its slack allows (``offload.hook.slack``): where a free slot finishes it first, the
    slowest free machine that ends it by then takes it instead. ``prefer_local``: its
    derivation has ``preferLocalBuild``, and the local machine builds it whenever it can.
    """
    if not builders:
        return Choice(Reply.DECLINE_PERMANENTLY, reason="no builders are configured")
    if prefer_local and (local.can_build or local.later):
        return _built_here(local, work=work, now=now)
    fitting = [b for b in builders if can_build(b.spec, request.system, request.features)]
    if not fitting:
        reason = "no builder has this system and these features"
        return Choice(Reply.DECLINE, reason=reason, unfit=True)
    up = [b for b in fitting if b.down_until is None or b.down_until <= now]
    down = sorted((b.down_until or now, b.spec.name) for b in fitting if b not in up)
    backed_off = tuple(name for _, name in down)
    local_start = now if local.start is None else max(now, local.start)
    local_end = local_start + work / local.speed if local.can_build else None
    if not up:
        return _all_backed_off(down, local, local_end, work=work, now=now, poll=poll_interval)
    choice = _place(
        up, local_end, work=work, now=now, poll_interval=poll_interval,
        default_work=default_work, queue=queue,
    )  # fmt: skip
    if room is not None and choice.reply is Reply.ACCEPT and not choice.waits:
        choice = _in_slack(up, local, local_end, choice, work=work, now=now, room=room)
    return dataclasses.replace(choice, backed_off=backed_off)


def _all_backed_off(
    down: Sequence[tuple[float, str]],
    local: LocalOffer,
    local_end: float | None,
    *,
    work: float,
    now: float,
    poll: float,
) -> Choice:
    """Every fitting builder is backed off (``down``: until when, soonest first): built here
    now, or once a local slot frees before the first is back, else postponed; ``stuck`` where
    the local machine never builds it."""
    backed_off = tuple(name for _, name in down)
    if local_end is not None:
        reason = "every fitting builder is backed off"
        return Choice(Reply.DECLINE, expected_end=local_end, reason=reason, backed_off=backed_off)
    back = down[0][0]
    # Not known when a slot frees: a builder back before it would be built here is waited for
    # (a review: one back in 6 s against an hour's local build, never asked again).
    if local.start is None:
        sooner = back > now + max(poll, work / local.speed)
    else:
        sooner = max(now, local.start) <= back
    if local.later and sooner:
        # Declined, Nix builds it once a local slot frees (it asks again then, not when a
        # backoff ends); postponed, it asked only at its next poll (5 s), a chain's every link
        # late (a tester). A slot expected to free after a builder is back: postponed.
        reason = "every fitting builder is backed off: built here once a local slot frees"
        return Choice(Reply.DECLINE, reason=reason, backed_off=backed_off)
    if local.later:
        reason = "every fitting builder is backed off: waiting for the first back"
        return Choice(Reply.POSTPONE, reason=reason, backed_off=backed_off)
    reason = "every builder that could build it is backed off"
    return Choice(Reply.DECLINE, reason=reason, backed_off=backed_off, stuck=True)


def _built_here(local: LocalOffer, *, work: float, now: float) -> Choice:
    """Declined for the local machine, which builds preferLocalBuild derivations whenever it
    can, as ``offload build`` does (``plan_jobs``): a trivial build whose inputs are often
    large would cost a builder's copies both ways, more than it gains there. When no local
    slot is free now (``later``: offload's view of the local machine is not Nix's, which
    asks about such a derivation only when it cannot build it here), Nix builds it once one
    frees."""
    reason = "preferLocalBuild: the local machine builds it"
    if not local.can_build:
        return Choice(Reply.DECLINE, reason=f"{reason} once a local slot frees")
    start = now if local.start is None else max(now, local.start)
    return Choice(Reply.DECLINE, expected_end=start + work / local.speed, reason=reason)


# Derivations a coordinator accepts to wait for a slot: at most this many a builder slot (and
# never fewer than the floor). Nix starts a hook for each it has accepted and never limits
# them: with a queue of every ready derivation, 60 of them on a builder of 2 slots ran Nix
# out of file descriptors ("creating pipe: Too many open files"). Past it, ``postpone``:
# Nix asks again once one of its children ends, and then the queue has room.
QUEUE_PER_SLOT = 2
QUEUE_FLOOR = 4


def may_queue(waiting: int, builders: Sequence[Builder]) -> bool:
    """Whether one more derivation may wait in the coordinator's queue for these builders,
    ``waiting`` waiting already."""
    slots = sum(b.spec.slots for b in builders)
    return waiting < max(QUEUE_FLOOR, QUEUE_PER_SLOT * slots)


def _place(
    up: Sequence[Builder],
    local_end: float | None,
    *,
    work: float,
    now: float,
    poll_interval: float,
    default_work: float,
    queue: bool,
) -> Choice:
    """``choose`` among the builders that are not backed off (at least one) and the local
    machine (``local_end``: when it would finish, None when it cannot build it now)."""
    best: tuple[float, Builder] | None = None
    best_free: tuple[float, Builder] | None = None
    for builder in up:
        default_end = now + default_work / builder.spec.speed
        start = _start(builder, now, default_end)
        if builder.free == 0 and not queue:
            # Nix asks about a postponed derivation again only after its poll interval.
            start = max(start, now + poll_interval)
        end = start + REMOTE_OVERHEAD + work / builder.spec.speed
        # A tie goes to a free slot: it is certain, a busy one's end is an estimate.
        if best is None or (end, builder.free == 0) < (best[0], best[1].free == 0):
            best = (end, builder)
        if builder.free > 0 and (best_free is None or end < best_free[0]):
            best_free = (end, builder)
    assert best is not None
    if local_end is not None and local_end <= best[0]:
        reason = "the local machine is expected to finish first"
        return Choice(Reply.DECLINE, expected_end=local_end, reason=reason)
    if best_free is not None and best_free[1] is best[1]:
        return Choice(Reply.ACCEPT, best[1].spec.name, best[0], "expected to finish first")
    if queue:
        name = best[1].spec.name
        return Choice(Reply.ACCEPT, name, best[0], f"a slot on {name} frees first", waits=True)
    options = [end for end in (local_end, best_free and best_free[0]) if end is not None]
    if not options or best[0] < min(options):
        return Choice(Reply.POSTPONE, reason=f"waiting for a slot on {best[1].spec.name}")
    if best_free is not None and (local_end is None or best_free[0] < local_end):
        name = best_free[1].spec.name
        return Choice(Reply.ACCEPT, name, best_free[0], "the fastest free builder")
    reason = "the local machine is the fastest free one"
    return Choice(Reply.DECLINE, expected_end=local_end, reason=reason)


def _in_slack(
    up: Sequence[Builder],
    local: LocalOffer,
    local_end: float | None,
    choice: Choice,
    *,
    work: float,
    now: float,
    room: float,
) -> Choice:
    """``choice`` (a free builder, the earliest finish), or the slowest free machine that
    still ends the derivation by ``room``: the local one (declined) or another free builder."""
    chosen = next(b for b in up if b.spec.name == choice.machine)
    slowest: tuple[float, float, Builder | None] | None = None  # speed, end, builder
    options: list[tuple[float, float, Builder | None]] = [
        (b.spec.speed, now + REMOTE_OVERHEAD + work / b.spec.speed, b) for b in up if b.free > 0
    ]
    if local_end is not None:
        options.append((local.speed, local_end, None))
    for speed, end, builder in options:
        if speed < chosen.spec.speed and end <= room and (slowest is None or speed < slowest[0]):
            slowest = (speed, end, builder)
    if slowest is None:
        return choice
    _, end, builder = slowest
    reason = "within its slack: the faster builders are left to the critical path"
    if builder is None:
        return Choice(Reply.DECLINE, expected_end=end, reason=reason)
    return Choice(Reply.ACCEPT, builder.spec.name, end, reason)


def place_queued(
    builders: Sequence[Builder],
    works: Sequence[float],
    now: float,
    default_work: float = 10.0,
) -> list[Builder]:
    """``builders`` as they will be once the derivations accepted and still waiting (their
    ``works``, in the order the coordinator asks them: ``Dispatch.queued``) are placed where
    each finishes first: a slot they take is busy until then."""
    up = [b for b in builders if b.down_until is None or b.down_until <= now]
    # Per builder: its free slots (None) and its busy ones' expected ends (overdue: now).
    slots: dict[int, list[float | None]] = {
        id(b): [None] * b.free
        + [now + default_work / b.spec.speed if e is None else max(e, now) for e in b.busy_ends]
        for b in up
    }
    for work in works:
        options = [
            ((now if end is None else end) + REMOTE_OVERHEAD + work / b.spec.speed, b, i)
            for b in up
            for i, end in enumerate(slots[id(b)])
        ]
        if not options:
            break
        end, chosen, i = min(options, key=lambda option: option[0])
        slots[id(chosen)][i] = end
    placed = []
    for b in builders:
        ends = slots.get(id(b))
        if ends is None:
            placed.append(b)
            continue
        busy = tuple(end for end in ends if end is not None)
        placed.append(Builder(b.spec, len(ends) - len(busy), busy, b.down_until, b.full_since))
    return placed
