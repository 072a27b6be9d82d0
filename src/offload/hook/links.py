"""Serve sessions to the builders, kept open from one accepted build to the next.

A hook that accepts a derivation needs a handshaken ``nix-store --serve --write`` session on the
builder before it says ``# accept``. Opening one costs an ssh round trip over the shared master
and a remote ``nix-store`` start (about 0.1 s on loopback, far more to a real builder), and Nix
waits for every reply before it does anything else. So a ``BuilderLinks`` keeps one ``Link`` per
builder for as long as its process lives: in the coordinator (``offload.hook.coordinator``) that
is across every hook and every Nix process of the user, and a session that finished a build
is lent to the next one. A session lent again is first asked a no-op question, so a session
whose builder went away since is replaced before the accept, not found dead after it; one that
finished a build within ``FRESH_SECONDS`` is not asked.

Each build holds one of the builder's slots on the builder itself (``Link.build_session``, as
``offload build``'s do), so offload's clients on every host count each other there: a session
holding a slot is opened for the build and kept ``LINGER`` s after it for the next derivation
there, then closed. A builder whose slots are all held by others says so at once
(``BuilderFullError``): before the accept the hook decides again with that builder taken for
full (Nix waits for the reply); after it the coordinator's dispatch places the derivation again
(``offload.hook.full``), while ``wait_for_slot`` waits for a slot there. What the
first build session learned (slots counted there, or on this host only and why) is written to
the state directory for ``offload status`` (``offload.slot_fallback``).

In the coordinator every session start's load report goes to its ``HookLoads``
(``offload.hook.loads``), and a change of the builder's usable slots is told in the log of the
next build there.

A builder whose key runs only the serve program (``Link.restricted``), or only ``nix-daemon
--stdio`` for an ``ssh-ng://`` one, works the same, its slots counted on this host only; the
first build there in this process gets one line in its log saying what offload then does
without. ``ssh-ng://`` builders are spoken to
in the daemon's protocol (``offload.transport.dialect``), the rest in serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import weakref
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from offload.config.machines import Machine
from offload.errors import OffloadError, SshError, TransportError
from offload.hook.loads import HookLoads
from offload.names import LOCAL
from offload.protocol.serve import StoreClient
from offload.protocol.store import also_heard
from offload.scheduler.run.disk import PARTIAL_CLEANUP_TIMEOUT
from offload.scheduler.run.reconnects import answers
from offload.slot_fallback import FALLBACK_FILE, record_fallbacks
from offload.transport.dialect import dialect_of
from offload.transport.links import BuilderFullError, Link
from offload.transport.links.machine import unmark
from offload.transport.persist import config_stamp, control_dir
from offload.transport.shared import SharedSshTransport
from offload.transport.ssh import split_sshopts, ssh_target
from offload.transport.ssh_keys import key_note

__all__ = [
    "FRESH_SECONDS",
    "HOOK_CONNECT_TIMEOUT",
    "RESTRICTED_NOTE",
    "BuilderFullError",
    "BuilderLinks",
    "Session",
    "Unreachable",
]

# A builder that does not answer within this is taken for down (nix#1712: Nix waits minutes).
HOOK_CONNECT_TIMEOUT = 5
RESTRICTED_NOTE = (
    "offload: builder '{name}': its key runs only {program}, so its load is not "
    "known (all its slots are used), its slots are counted on this host only (no slot lock "
    "on the builder) and a build stopped there is stopped by closing its session"
)
# A session lent again within this of finishing a build is not pinged: on tiny derivations the
# ping is a twentieth of what Nix waits for per derivation, and such a session just answered.
FRESH_SECONDS = 2.0


class Unreachable(Exception):
    """No working session could be had on the builder: back it off and decide again."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Stale(Unreachable):
    pass


@dataclass(frozen=True)
class Session:
    client: StoreClient
    transport: SharedSshTransport
    remote_pid: int | None  # the serve process on the builder, as its start line said
    remote_born: str | None  # and when it started (its kill spares a later holder of the pid)


class BuilderLinks:
    """One ``Link`` per builder as its machines line reads now (and per ssh identity), opened
    on first use; see the module."""

    def __init__(self, state: Path, loads: HookLoads | None = None) -> None:
        self._state = state
        self._loads = loads  # told every session start's load report (the coordinator's)
        self._links: dict[tuple[object, ...], tuple[SharedSshTransport, Link]] = {}
        # When each idle session last finished a build, answering all the way; weakly: a
        # session closed after its linger or its turn goes, and its entry with it (12 KB each,
        # a new one every turn of every busy slot, kept for a coordinator's life).
        self._answered: weakref.WeakKeyDictionary[StoreClient, float] = weakref.WeakKeyDictionary()
        # The link each lent session came from: its cleanup goes through that one.
        self._lent_by: weakref.WeakKeyDictionary[StoreClient, tuple[SharedSshTransport, Link]] = (
            weakref.WeakKeyDictionary()
        )
        self._noted: set[str] = set()  # restricted builders already told of
        self._keys_noted: set[tuple[str, str]] = set()  # (builder, key file) looked at
        # Sessions lent before: one never lent was handshaken just now and needs no ping.
        self._lent: weakref.WeakSet[StoreClient] = weakref.WeakSet()
        # What each builder's slots were last found to be (``offload.slot_fallback``).
        self._recorded: dict[str, str | None] = {}
        # Links of a builder's older line (``_retire``), and those being closed.
        self._retired: list[Link] = []
        self._closing: set[asyncio.Task[None]] = set()

    def _link(self, machine: Machine, env: Mapping[str, str]) -> tuple[SharedSshTransport, Link]:
        params = tuple(sorted(machine.params.items()))
        target = ssh_target(machine)
        # Everything the link was made from: a machines file edited while the coordinator
        # lives (a new pinned host key or ssh key, more or fewer jobs) gets a link of its own,
        # not the one made for the old line (its sessions then linger out, as after a build).
        # So does an ssh config edited meanwhile (a HostName or Port mended): its master is
        # another (``transport.persist``), as for a new process.
        # The ssh agent and NIX_SSHOPTS come from the client's environment: a second user's (or
        # a changed) environment gets sessions of its own.
        sshopts = env.get("NIX_SSHOPTS")
        stamp = config_stamp(split_sshopts(sshopts or ""))
        key: tuple[object, ...] = (machine.name, machine.uri, params, target, machine.max_jobs)
        key += (stamp, env.get("SSH_AUTH_SOCK"), sshopts)
        if key not in self._links:
            self._retire(key)
            transport = SharedSshTransport(
                target,
                name=machine.name,
                directory=control_dir(self._state),
                params=machine.params,
                env=env,
                connect_timeout=HOOK_CONNECT_TIMEOUT,
                dialect=dialect_of(machine),
            )
            link = Link(
                transport,
                max_sessions=machine.max_jobs + 1,
                builder_slots=machine.max_jobs,
                slot_start=transport.start,
            )
            if self._loads is not None:
                link.on_load = functools.partial(
                    self._loads.reported, machine.name, machine.max_jobs
                )
            self._links[key] = (transport, link)
        return self._links[key]

    def _retire(self, key: tuple[object, ...]) -> None:
        """Retire the links made for an older line of the builder ``key`` names (for the same
        client environment): their sessions between builds close now, not ``LINGER`` s later,
        so that the new line's slot count holds at once (an old session would hold one of the
        builder's slots meanwhile); the builds under way on them end there. Each is closed once
        no session of it is left."""
        for old in [k for k in self._links if k[0] == key[0] and k[-2:] == key[-2:]]:
            _, link = self._links.pop(old)
            link.retire()
            self._retired.append(link)
        for link in [link for link in self._retired if not link.open_sessions]:
            self._retired.remove(link)
            task = asyncio.get_running_loop().create_task(link.aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    @contextlib.asynccontextmanager
    async def session(
        self,
        machine: Machine,
        env: Mapping[str, str],
        on_log: Callable[[str], None],
    ) -> AsyncIterator[Session]:
        """A session known to answer, holding a slot on the builder where it can, or
        ``Unreachable``; the body's log lines go to ``on_log``. A builder whose slots are all
        held by others raises ``BuilderFullError``. Heard only while the body runs, not as
        a session it leaves early is stopped there: what Nix says then ("error: interrupted
        by the user", when the coordinator stopped the build, not the user) is no line of the
        build's, as in ``offload build`` (``scheduler.run.copy``)."""
        transport, link = self._link(machine, env)

        def full() -> None:
            raise BuilderFullError(machine.name)

        for attempt in (1, 2):
            lent = False
            try:
                async with link.build_session(on_wait=full) as client:
                    self._lent_by[client] = (transport, link)
                    self._learned(machine.name, link)
                    if not self._fresh(client):
                        try:
                            await client.query_valid_paths([])
                        except OffloadError as exc:
                            raise _Stale(exc.message) from exc  # the link discards it
                    lent = True
                    self._tell_notes(machine, transport, link, on_log)
                    with also_heard(client, on_log):
                        yield Session(
                            client, transport, link.remote_pid(client), link.remote_born(client)
                        )
                    self._answered[client] = time.monotonic()
            except _Stale as exc:
                if attempt == 2:
                    raise Unreachable(exc.reason) from exc
            except (SshError, TransportError) as exc:
                if lent or exc.peer == LOCAL:  # a program that would not start here: not it
                    raise
                raise Unreachable(exc.message) from exc
            else:
                return

    async def clear_partial(self, client: StoreClient, paths: Sequence[str]) -> None:
        """A build stopped mid-way (Nix gone: Ctrl-C, SIGTERM; the coordinator stopping):
        ``client``'s remote process stopped first (it holds them as temporary roots), then what
        it left half-written of ``paths`` deleted there, the last begun first, as ``offload
        build``'s copies are (``scheduler.run.copy``): over the link that lent ``client``,
        never one made since (an edited line or ssh config), the deletion bounded; not after a
        stop that failed (its process may hold them still: the builder's GC takes them)."""
        lent = self._lent_by.get(client)
        if lent is None:
            return
        transport, link = lent
        # What Nix says there as it is stopped ("interrupted by the user") is no line of the
        # build's: nobody interrupted the user's nix-build (``session``).
        client.on_log = None
        try:
            await link.cancel(client)  # bounded by the kill's own timeout
        except OffloadError:
            return
        with contextlib.suppress(TimeoutError, OffloadError, OSError):
            async with asyncio.timeout(PARTIAL_CLEANUP_TIMEOUT):
                await transport.remove_partial(paths[::-1])

    async def wait_for_slot(self, machine: Machine, env: Mapping[str, str]) -> None:
        """Wait until a slot on the full ``machine`` is ours: it then lingers (``LINGER``) for
        the next session there. ``Unreachable`` if the builder cannot be reached."""
        _, link = self._link(machine, env)
        try:
            async with link.build_session():
                self._learned(machine.name, link)
        except (SshError, TransportError) as exc:
            if exc.peer == LOCAL:
                raise
            raise Unreachable(exc.message) from exc

    async def answers(self, machine: Machine, env: Mapping[str, str]) -> None:
        """``machine`` answers a new session (``scheduler.run.reconnects.answers``), or
        ``Unreachable``."""
        _, link = self._link(machine, env)
        try:
            await answers(link, machine.name)
        except (SshError, TransportError) as exc:
            if exc.peer == LOCAL:
                raise
            raise Unreachable(exc.message) from exc

    def _learned(self, name: str, link: Link) -> None:
        """Keep what the builder's slots were found to be where ``offload status`` reads it,
        once per change (a write per build would cost the hook's tiny derivations)."""
        if link.slots_on_builder is None:
            return
        if name in self._recorded and self._recorded[name] == link.slot_fallback:
            return
        self._recorded[name] = link.slot_fallback
        with contextlib.suppress(OSError):  # status shows less; the build goes on
            record_fallbacks(self._state / FALLBACK_FILE, {name: link.slot_fallback}, time.time())

    def _tell_notes(
        self,
        machine: Machine,
        transport: SharedSshTransport,
        link: Link,
        on_log: Callable[[str], None],
    ) -> None:
        """What the build's log is told of the builder once it answered: its load, and, once
        per coordinator, a key that runs only one program there, or a key file its line names
        that ssh did without (missing, or too open: ssh logged in with another key), as
        ``offload build`` says them."""
        self._tell_load(machine.name, on_log)
        if link.restricted and machine.name not in self._noted:
            self._noted.add(machine.name)
            program = transport.dialect.describe(machine.params)
            if transport.dialect.name == "serve":
                program = "`nix-store --serve`"
            on_log(RESTRICTED_NOTE.format(name=machine.name, program=program))
        key = machine.ssh_key
        if key and (machine.name, key) not in self._keys_noted:
            self._keys_noted.add((machine.name, key))
            note = key_note(machine)
            if note is not None:
                on_log(f"offload: builder '{machine.name}': {note}")

    def _tell_load(self, name: str, on_log: Callable[[str], None]) -> None:
        """A change of the builder's usable slots for its load, once, in a build's log there."""
        said = self._loads.untold(name) if self._loads is not None else None
        if said is not None:
            on_log(said)

    def _fresh(self, client: StoreClient) -> bool:
        """Handshaken just now, or answered a whole build moments ago (so surely still
        there): no ping needed."""
        if client not in self._lent:
            self._lent.add(client)
            return True
        answered = self._answered.pop(client, None)
        return answered is not None and time.monotonic() - answered < FRESH_SECONDS

    async def aclose(self) -> None:
        self._answered.clear()
        for transport, link in self._links.values():  # before the masters' sessions end
            await unmark(link, transport)
        links, self._links = [link for _, link in self._links.values()], {}
        links += self._retired
        self._retired = []
        for link in links:
            await link.aclose()
        if self._closing:
            await asyncio.wait(set(self._closing))
