"""One build copy, and copying store paths from one store to another.

A build copy on a machine goes through the phases (queued ->) connecting -> sending inputs ->
building; its outputs are fetched home afterwards if they are wanted there (``fetch_home``,
batched per machine by ``homeward``).
Inputs come from the local store, else from a builder holding them, streamed through this
process from one serve session to the other (never through a file); nothing is registered
anywhere unless it arrived whole, and what a copy cut off mid-stream (it failed, or was
cancelled: the run stopped, the copy lost) left half-written in a builder's store (Nix's
AddToStoreNar writes in place) is deleted there. The sessions may speak
either protocol (``StoreClient``): the destination decides how inputs travel, and an ssh-ng://
builder's own build phases are passed on as steps of "building". How a copy ended is an
``Outcome`` (``outcome``), not an exception. Every build is sent the run's ``BuildOptions``
(Nix's timeouts and log limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Literal

from offload.errors import NotStarted, OffloadError, RemoteError, SshError
from offload.names import LOCAL
from offload.protocol.lanes import Lane
from offload.protocol.serve import BuildOptions, BuildResult, PathInfo
from offload.protocol.store import StoreClient, also_heard, copy_paths
from offload.scheduler.run.closure_copy import send_closure, to_copy
from offload.scheduler.run.disk import (
    PARTIAL_CLEANUP_TIMEOUT,
    Cleanup,
    disk_full,
    disk_full_error,
    remove_partial,
)
from offload.scheduler.run.events import RunEvents
from offload.scheduler.run.holders import Holders, InputsGone
from offload.scheduler.run.homeward import HomeBatches
from offload.scheduler.run.in_flight import InFlight
from offload.scheduler.run.outcome import Outcome, local_store_failed
from offload.scheduler.run.plan import BuildPlan, MemberLink, PoolMember
from offload.slots import SlotLocks
from offload.store.path import StorePath
from offload.store.provenance import NOT_MADE, Provenance, refused_paths

__all__ = ["AfterHome", "BuildCopies", "cleared_cut", "send_closure"]


@dataclass
class _Onward:
    """A copy from one builder to another (``to``): what goes to it, told before it goes
    (``sending``, for the clean-up of a cut copy), and the bytes that went from this host."""

    to: StoreClient
    sending: list[str]
    moved: int = 0


# What runs once a derivation built elsewhere has its outputs valid here: (derivation, its
# outputs, where its lines go). An OffloadError of it fails the build.
AfterHome = Callable[[str, Sequence[str], Callable[[str], None]], Awaitable[None]]


async def cleared_cut(
    link: MemberLink, client: StoreClient, sending: Sequence[str], what: str
) -> Cleanup:
    """What of ``sending`` (dependencies first) a copy cut off mid-stream left on ``link``'s
    machine deleted, bounded; how it went. Its session is stopped first: one cut off
    mid-request still has its serve process there, holding the half-written path as a
    temporary root, and the deletion of that path fails while it lives."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(PARTIAL_CLEANUP_TIMEOUT):
            if not client.usable:
                with contextlib.suppress(OffloadError):
                    await link.cancel(client)
            # The path being written is the last begun: looked at first.
            return await remove_partial(link, sending[::-1], what=what)
    timeout = PARTIAL_CLEANUP_TIMEOUT
    return Cleanup(False, f"; its partial {what} may stay there (no answer in {timeout:g} s)")


class BuildCopies:
    """Runs build copies on the pool's machines and fetches their outputs home."""

    def __init__(
        self,
        plan: BuildPlan,
        members: Mapping[str, PoolMember],
        local: MemberLink,
        holders: Holders,
        events: RunEvents,
        *,
        slots: SlotLocks | None,
        wall: Callable[[], float],
        clock: Callable[[], float],
        options: BuildOptions,
        on_full: Callable[[str, str], None] = lambda _drv, _machine: None,
        on_slot: Callable[[str, str], None] = lambda _drv, _machine: None,
        expected_end: Callable[[str, str], float] | None = None,
        after_home: AfterHome | None = None,
    ) -> None:
        self.plan = plan
        # Told each derivation built elsewhere once its outputs are valid here, with its
        # outputs and where its lines go; its error fails the build (Nix's post-build-hook).
        self.after_home = after_home
        self.options = options
        self.members = members
        self.local = local
        self.holders = holders
        self.events = events
        self.slots = slots
        self.wall = wall
        self.clock = clock
        # Told (derivation, machine) when a copy finds every builder-side slot held by other
        # clients, and when such a waiting copy gets one.
        self.on_full = on_full
        self.on_slot = on_slot
        # When a build of (derivation, machine) begun now is expected to end (wall clock),
        # written into the slot it holds for other processes on this host to read.
        self.expected_end = expected_end
        self._home = HomeBatches(self._fetch)
        # What each store is being sent, by which copy: never the same path twice at once.
        self._in_flight = InFlight()
        # The derivations whose outputs are on their way home (``fetch_home``): a copy whose
        # inputs no store holds meanwhile waits for them (``_inputs_arriving``).
        self._arriving: dict[str, asyncio.Event] = {}
        # What may come home: the paths the plan's derivations make (``offload.store.provenance``).
        self._provenance = Provenance(plan.drvs)

    async def build(self, drv_path: str, member: PoolMember, *, speculative: bool) -> Outcome:
        started = self.wall()
        name = member.spec.name
        drv = self.plan.drvs[drv_path]
        phase = self.events.phase
        sent = received = 0
        client: StoreClient | None = None
        build_start: float | None = None  # when the build itself began
        try:
            await self._inputs_arriving(drv_path)  # before it holds a slot there
            async with contextlib.AsyncExitStack() as stack:
                if self.slots is not None and member.slot_key is not None:
                    expected = self.expected_end
                    # Other offload runs and Nix's own hook may hold some of this machine's slots.
                    await stack.enter_async_context(
                        self.slots.hold(
                            member.slot_key,
                            member.spec.slots,
                            lambda: phase(drv_path, name, "queued", speculative=speculative),
                            None
                            if expected is None
                            else functools.partial(expected, drv_path, name),
                            StorePath(drv_path).derivation_name,
                        )
                    )
                client = await self._session(stack, drv_path, member, speculative=speculative)
                _heard(stack, client, self.events.log_handler(drv_path, name))
                sent, received = await self._send_inputs(
                    drv_path, member, client, speculative=speculative
                )
                phase(drv_path, name, "building", speculative=speculative)
                client.on_phase = self.events.step_handler(drv_path, name)
                build_start = self.clock()
                inputs = self.plan.inputs[drv_path]
                result = await client.build_derivation(
                    drv_path, drv, input_srcs=inputs, options=self.options
                )
                build_seconds = self.clock() - build_start
                if not result.success:
                    lost = await self._disk_full(member, client, drv_path, result)
                    end: Literal["failed", "lost"] = "failed" if lost is None else "lost"
                    why = result.error_msg if lost is None else lost
                    return Outcome(end, why, started, sent, received, status=result.status)
            home = not member.remote
            return Outcome("built", None, started, sent, received, build_seconds, home)
        except InputsGone as exc:
            return Outcome("returned", exc.message, started, sent, received, source=exc.source)
        except asyncio.CancelledError:
            if client is not None:
                await self._stop(member, client, drv_path if build_start is not None else None)
            raise
        except NotStarted as exc:
            # This host could not start a program for it (EMFILE, EAGAIN): neither the
            # machine's fault nor the derivation's: tried again, as a copy whose inputs went.
            return Outcome("returned", exc.message, started, sent, received)
        except OffloadError as exc:
            # The local store refusing or dropping a copy is final, not the builder's fault.
            kind: Literal["failed", "lost"] = "failed" if local_store_failed(exc) else "lost"
            said = isinstance(exc, RemoteError)
            return Outcome(kind, exc.message, started, sent, received, nix_said=said)

    async def _send_inputs(
        self, drv_path: str, member: PoolMember, client: StoreClient, *, speculative: bool
    ) -> tuple[int, int]:
        """Copy to ``member`` the inputs of ``drv_path`` it lacks (from here or from the
        builders that hold them): the bytes (sent, received) this side counts."""
        name = member.spec.name
        target = name if member.remote else LOCAL
        sent = received = 0
        sources = self.holders.sources(drv_path, target)
        if sources:
            self.events.phase(drv_path, name, "sending", speculative=speculative)
            moved = await self._feed(sources, client, target, member.substitute, drv_path=drv_path)
            sent, received = (moved, 0) if member.remote else (0, moved)
        self.holders.fed.add((drv_path, name))
        return sent, received

    async def _disk_full(
        self, member: PoolMember, client: StoreClient, drv_path: str, result: BuildResult
    ) -> str | None:
        """If the failed build's builder ran out of disk, why the copy is lost there (its
        partial outputs deleted): not the derivation's failure. None for any other failure."""
        if not (member.remote and disk_full(result.status, result.error_msg)):
            return None
        # Its serve process holds the partial outputs as temporary GC roots.
        await member.link.cancel(client)
        why = disk_full_error(member.spec.name, result.error_msg)
        return why + (await remove_partial(member.link, self.plan.outputs[drv_path])).said

    async def _stop(self, member: PoolMember, client: StoreClient, drv_path: str | None) -> None:
        """A copy cancelled (it lost to another, its builder was taken down, the run stopped):
        its remote process stopped and, if it was building ``drv_path``, what it wrote of the
        outputs deleted (Nix leaves them unregistered in the store until the next build or
        GC), bounded: a builder that no longer answers must not hold the run up. Not after a
        stop that failed: its process may still hold them, and the builder is likely gone.
        Where they stay (a key that runs only its protocol's program), the build's log says."""
        try:
            await member.link.cancel(client)
        except OffloadError:
            return
        if drv_path is not None and member.remote:
            cleanup = Cleanup(False, "; its partial outputs may stay there")
            with contextlib.suppress(OSError):  # the cancellation must go on
                outputs = self.plan.outputs[drv_path]
                cleanup = await cleared_cut(member.link, client, outputs, "outputs")
            if not cleanup.deleted:
                name = member.spec.name
                self.events.log_handler(drv_path, name)(f"offload: stopped on {name}{cleanup.said}")

    async def _session(
        self,
        stack: contextlib.AsyncExitStack,
        drv_path: str,
        member: PoolMember,
        *,
        speculative: bool,
    ) -> StoreClient:
        """A session to build on, held on the builder too, where other hosts' clients count it
        (``Link.build_session``); "queued" while every slot there is someone else's, which
        ``on_full`` hears (the executor may move the job), and ``on_slot`` when one is had."""
        name, phase = member.spec.name, self.events.phase
        phase(drv_path, name, "connecting", speculative=speculative)
        waited = False

        def wait() -> None:
            nonlocal waited
            waited = True
            phase(drv_path, name, "queued", speculative=speculative)
            self.on_full(drv_path, name)

        client = await stack.enter_async_context(member.link.build_session(on_wait=wait))
        if waited:
            self.on_slot(drv_path, name)
        return client

    async def _feed(
        self,
        sources: Mapping[str, list[str]],
        client: StoreClient,
        target: str,
        substitute: bool,
        *,
        drv_path: str,
    ) -> int:
        """Copy each group of inputs from its store to ``client``'s; returns bytes moved."""
        moved = 0
        for source, paths in sources.items():
            link = self.local if source == LOCAL else self.members[source].link
            # Uploads from here may take a second connection to the builder (``lanes``).
            lane = self._lane(drv_path, target) if source == LOCAL and target != LOCAL else None
            sending: list[str] = []  # what the copy sends, dependencies first
            onward = _Onward(client, sending) if target != LOCAL else None
            vet = None if source == LOCAL else functools.partial(self._vet, source, onward=onward)
            try:
                async with link.session() as src:
                    moved += await send_closure(
                        src,
                        client,
                        paths,
                        substitute=substitute,
                        lane=lane,
                        sending=sending,
                        vet=vet,
                        claim=functools.partial(self._in_flight.claimed, target, client),
                    )
                moved += onward.moved if onward is not None else 0
            except asyncio.CancelledError:
                # The run stopped, the copy lost: as for a cut-off one (here too: Nix restores
                # a NAR straight into its path).
                await self._remove_cut(client, target, sending, drv_path)
                raise
            except OffloadError as exc:
                await self._remove_cut(client, target, sending, drv_path)
                # Failures of the source's own session are the source's; the rest (the
                # target, the local store) are handled as for any other copy.
                peer = getattr(exc, "peer", None)
                if source == LOCAL or peer in {target, LOCAL}:
                    raise
                raise InputsGone(source, exc.message) from exc
            self.holders.sent(paths, target)
        return moved

    def _lane(
        self, drv_path: str, target: str
    ) -> Callable[[], AbstractAsyncContextManager[Lane | None]] | None:
        """``target``'s second lane for this build's upload; a second login that fails (an
        agent that asks, a key that wants a touch, sshd's MaxStartups) is said in the build's
        log and the copy goes over the one connection: the builder itself answered."""
        opener = self.members[target].lane
        if opener is None:
            return None
        say = self.events.log_handler(drv_path, target)

        @contextlib.asynccontextmanager
        async def lane() -> AsyncIterator[Lane | None]:
            async with contextlib.AsyncExitStack() as stack:
                pair: Lane | None = None
                try:
                    pair = await stack.enter_async_context(opener())
                except SshError as exc:
                    say(f"offload: no second connection for this copy ({exc.message}): one")
                yield pair

        return lane

    async def _remove_cut(
        self, client: StoreClient, target: str, sending: Sequence[str], drv_path: str
    ) -> None:
        """A copy to ``target`` cut off mid-stream (it failed, or was cancelled) leaves the
        path it was writing half-written there (never registered, but taking disk space until
        a GC): what of ``sending`` is there and invalid is deleted, bounded (a builder that no
        longer answers must not hold the copy's report or the run's stop up). A builder that
        cannot (its key runs only its protocol's program) keeps it: said in the build's log."""
        if not sending:
            return
        cleanup = await self._cleared(client, target, sending, "inputs")
        if not cleanup.deleted:
            self.events.log_handler(drv_path, target)(
                f"offload: the copy of its inputs to {target} was cut off{cleanup.said}"
            )

    async def _cleared(
        self, client: StoreClient, target: str, sending: Sequence[str], what: str
    ) -> Cleanup:
        """What of ``sending`` a cut copy left at ``target`` deleted (``cleared_cut``)."""
        return await cleared_cut(self._link(target), client, sending, what)

    def _link(self, machine: str) -> MemberLink:
        """``machine``'s link; this host's store's is the run's local link (with -j 0 the
        local machine is no member)."""
        return self.local if machine == LOCAL else self.members[machine].link

    async def fetch_home(self, drv_path: str, machine: str, source: str) -> int:
        """The outputs of ``drv_path``, built on ``machine``, made valid here from ``source``
        (``machine``, or another store they were sent to), with the other builds' there that
        end meanwhile (``homeward``), and Nix's post-build-hook run for them; the bytes that
        came for it."""
        self.events.phase(drv_path, machine, "fetching", speculative=False)
        outputs = self.plan.outputs[drv_path]
        arriving = self._arriving[drv_path] = asyncio.Event()
        try:
            # Valid here already (``source`` this host's store): nothing to fetch.
            moved = 0 if source == LOCAL else await self._home.fetch(source, drv_path, outputs)
            self.holders.arrived_home(drv_path)
        finally:
            arriving.set()
            if self._arriving.get(drv_path) is arriving:
                del self._arriving[drv_path]
        if self.after_home is not None:
            await self.after_home(drv_path, outputs, self.events.log_handler(drv_path, machine))
        return moved

    async def _inputs_arriving(self, drv_path: str) -> None:
        """Wait for the inputs of ``drv_path`` that no store holds but that are on their way
        here: their builder fell as they came (its disk filled up, say), and a fetch under
        way may well end. Taken for lost, each start of a dependent counted a loss, and three
        failed it while its input was still arriving."""
        for path in self.plan.inputs[drv_path]:
            job = self.holders.producer.get(path)
            arriving = None if job is None else self._arriving.get(job)
            if arriving is not None and job is not None and not self.holders.where.get(job):
                await arriving.wait()

    async def _vet(
        self, machine: str, infos: Sequence[PathInfo], *, onward: _Onward | None = None
    ) -> Sequence[PathInfo]:
        """What to copy of ``infos`` from ``machine``: a path no derivation of the run makes
        (``offload.store.provenance``) is refused, unless this host holds it. Copied here, what
        this host holds is never asked for; to another builder (``onward``), such a path (glibc
        under an input valid here) goes from this host's store, never from the builder's.
        A refusal is its fault, as for one that went away: it is backed off, and what it
        built is made again elsewhere (``endings``)."""
        strays = self._provenance.unexplained(info.path for info in infos)
        if not strays:
            return infos
        here: set[str] = set()
        if onward is not None:
            async with self.local.session() as local:
                here = await local.query_valid_paths(strays)
                if not set(strays) - here:
                    # Told what it sends before a byte goes: a cut copy's partial path there
                    # is deleted as for the builder's own (``_remove_cut``).
                    first = len(onward.sending)
                    onward.moved += await send_closure(
                        local, onward.to, sorted(here), sending=onward.sending
                    )
                    skip = here | set(onward.sending[first:])
                    return [info for info in infos if info.path not in skip]
        where = "brought home" if onward is None else f"copied to '{onward.to.name}'"
        refused = sorted(set(strays) - here)
        raise refused_paths(machine, "the outputs it built", refused, NOT_MADE, to=where)

    async def _fetch(self, machine: str, paths: Sequence[str]) -> Sequence[PathInfo]:
        link = self.members[machine].link
        async with link.session() as src, self.local.session() as local:
            infos = await self._vet(machine, await to_copy(src, local, paths, whole=True))
            try:
                if infos:
                    await copy_paths(src, local, infos)
            except (asyncio.CancelledError, OffloadError):
                # Cut off (Ctrl-C, the builder lost): what it left half-written here goes.
                await self._cleared(local, LOCAL, [info.path for info in infos], "outputs")
                raise
            return infos


def _heard(
    stack: contextlib.AsyncExitStack, client: StoreClient, handler: Callable[[str], None]
) -> None:
    """The build's log lines go to ``handler`` until ``stack`` unwinds, and still to the
    session's own hearer (``client.on_log`` as lent): it notes when the builder last spoke,
    which tells one that stopped answering from one that closed the connection
    (``offload.transport.links.streams``). Unheard before the session is let go (the stack
    unwinds in reverse): what Nix says as a cancelled copy's session is stopped there ("error:
    interrupted by the user") is no line of the build's; offload stopped it (it lost to
    another copy, its machine went down, the run ended) and says so where it does."""
    stack.callback(_unphased, client)
    stack.enter_context(also_heard(client, handler))


def _unphased(client: StoreClient) -> None:
    client.on_phase = None
