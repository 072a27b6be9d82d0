"""The pool as the executor's members: the local machine (named ``LOCAL``) first, then one
link per usable builder; each builder's load, as its link's sessions report it, goes to the
executor, which cuts its slots for it (``follow_loads``, ``offload.scheduler.run.loads``)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from pathlib import Path

from offload.config.pool import Pool
from offload.errors import SchedulerError
from offload.load import RemoteLoad
from offload.names import LOCAL
from offload.scheduler.policy import MachineSlotSpec
from offload.scheduler.run import PoolMember
from offload.scheduler.run.plan import PREFER_LOCAL
from offload.slot_fallback import record_fallbacks
from offload.slots import slot_key
from offload.tasks import wait_all
from offload.transport.links import Link, LocalLink, MachineLink, early
from offload.transport.sessions import open_lane
from offload.transport.ssh_keys import key_note
from offload.ui.events import Event, MachineEvent

__all__ = [
    "RESTRICTED",
    "follow_loads",
    "local_spec",
    "no_machine_error",
    "pool_members",
    "pool_specs",
    "tell_missing_keys",
    "tell_restricted",
    "tell_unstopped",
]


def local_spec(pool: Pool) -> MachineSlotSpec | None:
    """The local machine as the scheduler sees it (None without slots): it alone offers
    ``PREFER_LOCAL``, which ``preferLocalBuild`` derivations it can build require."""
    if pool.local is None or pool.local.max_jobs <= 0:
        return None
    return MachineSlotSpec(
        name=LOCAL,
        speed=pool.local.speed_factor,
        slots=pool.local.max_jobs,
        systems=frozenset(pool.local.systems),
        supported=frozenset({*pool.local.supported_features, PREFER_LOCAL}),
    )


def pool_specs(pool: Pool) -> list[MachineSlotSpec]:
    """The pool as the scheduler sees it: the local machine first, then each usable builder."""
    local = local_spec(pool)
    usable = [m for m in pool.machines if m.enabled and m.max_jobs > 0]
    builders = [MachineSlotSpec.from_machine(m) for m in usable]
    return ([local] if local else []) + builders


@contextlib.asynccontextmanager
async def pool_members(
    pool: Pool,
    local_link: LocalLink,
    env: Mapping[str, str] | None = None,
    fallbacks: Path | None = None,
    shared: Path | None = None,
) -> AsyncIterator[list[PoolMember]]:
    """The members, their links open for the body; what their build sessions found of each
    builder's slots (counted there, or here only and why) is written to ``fallbacks`` after.
    A builder whose master was not started early (left out then, backed off) connects over
    its persistent master in ``shared`` (``transport.persist``), as the others do.
    Every link is closed at the end, ``local_link``'s too: its sessions end with the builders'.
    None at all is no error here: a run with nothing to build needs none (``no_machine_error``
    is the caller's once it knows)."""
    members: list[PoolMember] = []
    links: list[MachineLink] = []
    try:
        local = local_spec(pool)
        if local is not None:
            members.append(PoolMember(local, local_link, remote=False, slot_key=LOCAL))
        for machine in pool.machines:
            if not machine.enabled or machine.max_jobs <= 0:
                continue
            # Nix's setting turns it on for every builder; else the machine's URI parameter.
            link = MachineLink.from_machine(
                machine,
                env=env,
                substitute=pool.builders_use_substitutes or None,
                transport=early.claim(machine, env=env),  # its master started at the outset
                shared=shared,
            )
            links.append(link)
            members.append(
                PoolMember(
                    MachineSlotSpec.from_machine(machine),
                    link,
                    remote=True,
                    slot_key=slot_key(machine.uri),
                    substitute=link.substitute,
                    # ssh compresses on one core per connection: large uploads take two.
                    lane=functools.partial(open_lane, machine, env, pool.local_env())
                    if link.ssh.target.compress
                    else None,
                )
            )
        try:
            yield members
        finally:
            if fallbacks is not None:
                _remember_slots(members, fallbacks)
    finally:
        await _close_all([local_link, *links])


def no_machine_error(pool: Pool) -> SchedulerError:
    # No member means neither the local machine nor a builder takes jobs, which no_machine
    # says; its fallback is for a pool that ever disagrees, not an assert (gone under -O).
    why = pool.no_machine() or ("no machine takes jobs", "offload machines lists them")
    return SchedulerError(f"no machine to build on: {why[0]}", hint=why[1])


async def _close_all(links: list[Link]) -> None:
    """Close every link at once (its sessions, remote processes and ssh master): each is its own
    builder's, and one slow to let go holds up none of the others. All are waited for, even by
    a caller cancelled meanwhile (which is then raised); else the first error is."""
    closing = [asyncio.create_task(link.aclose()) for link in links]
    for error in await wait_all(closing):
        raise error


def _remember_slots(members: list[PoolMember], path: Path) -> None:
    """For ``offload status`` (``offload.slot_fallback``): a failure to write costs only that."""
    learned = {
        m.spec.name: m.link.slot_fallback
        for m in members
        if isinstance(m.link, MachineLink) and m.link.slots_on_builder is not None
    }
    if learned:
        with contextlib.suppress(OSError):
            record_fallbacks(path, learned, time.time())


RESTRICTED = (
    "its key runs only `nix-store --serve`: its load is not known (all its slots are used), "
    "its slots are counted on this host only (no slot lock on the builder) "
    "and a build stopped there is stopped by closing its session"
)


def restricted_note(link: MachineLink) -> str:
    """What a builder whose key runs only its protocol's program keeps from offload."""
    if link.ssh.dialect.name == "serve":
        return RESTRICTED
    program = link.ssh.dialect.describe(link.ssh.params)
    return RESTRICTED.replace("`nix-store --serve`", program)


def tell_restricted(members: list[PoolMember], emit: Callable[[Event], None]) -> None:
    """A builder that cannot report its load (its key runs only the serve program) is told
    once, as a "restricted" MachineEvent."""
    for member in members:
        if member.remote and isinstance(member.link, MachineLink) and member.link.restricted:
            note = restricted_note(member.link)
            emit(MachineEvent(member.spec.name, "restricted", note, None, time.time()))


def tell_missing_keys(pool: Pool, answered: Collection[str], emit: Callable[[Event], None]) -> None:
    """A builder that ``answered`` though the ssh key file its line names does not exist, or
    is one ssh ignores as others may read it, is told once, as a "key" MachineEvent: ssh went
    on with another key, without a word. (One that did not answer for it is down, and its
    reason says what is wrong with the file.)"""
    for machine in pool.machines:
        note = key_note(machine) if machine.name in answered else None
        if note is not None:
            emit(MachineEvent(machine.name, "key", note, None, time.time()))


def tell_unstopped(members: list[PoolMember], emit: Callable[[Event], None]) -> None:
    """A build stopped on a builder whose process could not be stopped there (its kill
    failed: the builder went away) is told, as an "unstopped" MachineEvent, each time."""
    for member in members:
        if member.remote and isinstance(member.link, MachineLink):
            member.link.on_unstopped = functools.partial(_unstopped, emit, member.spec.name)


def _unstopped(emit: Callable[[Event], None], name: str, message: str) -> None:
    emit(MachineEvent(name, "unstopped", message, None, time.time()))


def follow_loads(members: list[PoolMember], report: Callable[[str, RemoteLoad], None]) -> None:
    """Each builder's load goes to ``report`` (by the builder's name): the latest its sessions
    reported at once (the start-of-run cut), and then every session start's there."""
    for member in members:
        link = member.link
        if member.remote and isinstance(link, MachineLink):
            link.on_load = functools.partial(report, member.spec.name)
            if link.load is not None:
                report(member.spec.name, link.load)
