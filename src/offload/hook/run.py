"""One hook process: Nix's requests answered until one is accepted and built, or stdin ends.

For each ``try`` the hook decides (``offload.hook.decide``) from state it shares with every
other hook process and ``offload build`` run; each process decides alone, with no coordinator,
so a derivation costs no round trip to another process, only a look at a few lock files, the
backoff file and one history query. To accept, it first takes a slot lock of the chosen
builder (Nix's own ``current-load`` file, with the build's expected end written in it) and opens
a serve session there over the builder's persistent ssh master; only then does it say
``# accept``, as build-remote connects before it accepts. A builder that cannot be reached is
backed off (remembered in ``backoff.json`` by every later hook and run) and the decision is
made again without it, so a dead builder costs one connect timeout per back-off period, not one
per derivation (nix#13513). After the build, the hook exits: Nix starts a new hook process for
the next derivation, which reuses the ssh master.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator

from offload.errors import OffloadError, ProtocolError, SshError, TransportError
from offload.history.db import History
from offload.history.records import BuildRecord
from offload.hook.context import HookContext, poll_interval
from offload.hook.decide import Choice, choose
from offload.hook.guard import Guard
from offload.hook.remote import Outcome, build_options, build_remote, error_message, log_writer
from offload.hook.wire import Accepted, Reply, TryRequest, read_accepted, write_reply
from offload.protocol.serve import ServeClient
from offload.protocol.wire import ByteReader
from offload.slots import slot_key
from offload.store.path import STORE_DIR
from offload.transport.links import Link, LocalLink
from offload.transport.shared import SharedSshTransport, control_dir
from offload.transport.ssh import ssh_target

__all__ = ["answer"]

# A builder that does not answer within this is taken for down (nix#1712: Nix waits minutes).
HOOK_CONNECT_TIMEOUT = 5
# Decisions made again after a lost race for a slot or a builder that did not answer.
_MAX_ATTEMPTS = 8


def _decide(context: HookContext, request: TryRequest, excluded: set[str]) -> Choice:
    now = time.time()
    return choose(
        request,
        context.builders(now, excluded),
        context.local_offer(request, now),
        work=context.work(request),
        now=now,
        poll_interval=poll_interval(context.settings),
    )


def _transport(context: HookContext, name: str) -> SharedSshTransport:
    machine = context.machine(name)
    return SharedSshTransport(
        ssh_target(machine),
        name=name,
        directory=control_dir(context.state),
        params=machine.params,
        env=context.env,
        connect_timeout=HOOK_CONNECT_TIMEOUT,
    )


@contextlib.asynccontextmanager
async def _slot(context: HookContext, choice: Choice) -> AsyncIterator[bool]:
    """Hold a slot of the chosen builder for the body; yields False if all were taken."""
    machine = context.machine(str(choice.machine))
    fd = context.slots.try_acquire(
        slot_key(machine.uri), machine.max_jobs, until=choice.expected_end
    )
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)


async def answer(context: HookContext, reader: ByteReader, request: TryRequest) -> int | None:
    """Reply to ``request``; after an accepted build, the hook's exit code (else None)."""
    excluded: set[str] = set()
    for _ in range(_MAX_ATTEMPTS):
        choice = _decide(context, request, excluded)
        context.say(f"{request.drv_path}: {choice.reply.value} ({choice.reason})", level=4)
        if choice.reply is not Reply.ACCEPT:
            if choice.reply is Reply.DECLINE and choice.expected_end is not None:
                context.declined(request, choice.expected_end)
            write_reply(choice.reply)
            return None
        name = str(choice.machine)
        async with _slot(context, choice) as held:
            if not held:
                continue  # another process took the slot since the probe: decide again
            try:
                return await _accept(context, reader, request, name)
            except _Unreachable as exc:
                context.machine_failed(name, exc.reason)
                excluded.add(name)
    write_reply(Reply.POSTPONE)
    return None


class _Unreachable(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def _accept(context: HookContext, reader: ByteReader, request: TryRequest, name: str) -> int:
    transport = _transport(context, name)
    async with Link(transport, max_sessions=1) as link, contextlib.AsyncExitStack() as stack:
        try:
            remote = await stack.enter_async_context(link.session(log_writer()))
        except (SshError, TransportError) as exc:
            raise _Unreachable(exc.message) from exc
        context.machine_ok(name)
        write_reply(Reply.ACCEPT, context.machine(name).uri)
        accepted = await read_accepted(reader)
        pid = link.remote_pid(remote)
        guard = Guard(STORE_DIR, transport.kill_argv(pid) if pid is not None else ["true"])
        try:
            outcome = await _build(context, remote, request, accepted, name)
        finally:
            guard.dismiss()
    if outcome is None:
        return 1
    _record(context, request, name, outcome)
    return outcome.exit_code


async def _build(
    context: HookContext, remote: ServeClient, request: TryRequest, accepted: Accepted, name: str
) -> Outcome | None:
    machine = context.machine(name)
    substitute = context.pool.builders_use_substitutes or (
        machine.params.get("builders-use-substitutes") == "true"
    )
    try:
        async with (
            LocalLink(max_sessions=1, env=context.env) as local_link,
            local_link.session() as local,
        ):
            return await build_remote(
                request,
                accepted,
                local=local,
                remote=remote,
                machine=name,
                options=build_options(context.settings),
                substitute=substitute,
            )
    except (OffloadError, OSError) as exc:
        message = exc.message if isinstance(exc, OffloadError) else str(exc)
        error_message(f"offload-hook: building '{request.drv_path}' on '{name}': {message}")
        if isinstance(exc, TransportError | ProtocolError):
            context.machine_failed(name, message)
        return None


def _record(context: HookContext, request: TryRequest, name: str, outcome: Outcome) -> None:
    record = BuildRecord(
        run_id=f"hook-{uuid.uuid4().hex[:12]}",
        drv_path=request.drv_path,
        pname=request.pname,
        machine=name,
        started=outcome.started,
        finished=outcome.finished,
        status="built" if outcome.exit_code == 0 else "failed",
        bytes_sent=outcome.sent,
        bytes_received=outcome.received,
    )
    with contextlib.suppress(OffloadError), History(context.state / "history.sqlite") as history:
        history.record([record])
