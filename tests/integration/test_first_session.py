"""Over a master kept by an earlier run, the first session starts before the run asks for it.

``SshTransport.connect_early`` finds the builder's persistent master alive and starts the first
session there at once (``offload.transport.links.first_session``): its ssh and the builder's
serve program start while ``offload build`` imports the rest of itself, with no event loop
running. Each test keeps a master with one transport (as an earlier run would), then drives a
second one as a run does, on an event loop of its own so that the loop can be left idle between
``connect_early`` and the session, as the run's imports leave it. A real member (sshd, Nix)
answers; its processes are read from /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload.fleet import Fleet, MemberSpec
from offload.transport.links import SshTransport
from offload.transport.persist import control_dir
from offload.transport.ssh import ssh_target
from tests.helpers.fleets import (
    fleet_machine,
    member_processes,
    persistent_masters,
    private_fleet_fixture,
    stop_masters,
)
from tests.helpers.offload_run import wait_for

first_fleet = private_fleet_fixture(
    [MemberSpec.parse("firstq:1:1")],
    "ofq",
    doc="One member, over whose kept master each test starts its sessions.",
)


@pytest.fixture
def control(first_fleet: Fleet, tmp_path: Path) -> Iterator[Path]:
    """The state's control directory, holding a master kept by an earlier transport's session."""
    kept = control_dir(tmp_path / "state")

    async def earlier_run() -> None:
        transport = _transport(first_fleet, kept)
        try:
            async with contextlib.AsyncExitStack() as stack:
                await transport.start(stack)
        finally:
            await transport.close()

    asyncio.run(earlier_run())
    assert len(persistent_masters(kept)) == 1
    wait_for(lambda: not _serving(first_fleet), 10, "the earlier run's session to end")
    try:
        yield kept
    finally:
        stop_masters(kept)


def _transport(fleet: Fleet, control: Path) -> SshTransport:
    machine = fleet_machine(fleet, "firstq")
    return SshTransport(ssh_target(machine), name="firstq", env=fleet.env(), shared=control)


def _serving(fleet: Fleet) -> list[int]:
    """The member's serve programs running (one per session)."""
    return [
        pid for pid, cmd in member_processes(fleet.member("firstq")) if "nix-store --serve" in cmd
    ]


def test_the_first_session_starts_while_no_event_loop_runs_and_the_run_takes_it(
    first_fleet: Fleet, control: Path
) -> None:
    transport = _transport(first_fleet, control)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(transport.connect_early())
        # The loop is idle now, as it is while a run imports: the session starts regardless.
        wait_for(lambda: len(_serving(first_fleet)) == 1, 10, "the first session to start")
        started = _serving(first_fleet)

        async def first_session() -> None:
            async with contextlib.AsyncExitStack() as stack:
                pipes = await transport.start(stack)
                assert pipes.pid is not None  # it answered as a session of our wrapper does
                assert _serving(first_fleet) == started  # that one, not a second one
                second = await transport.start(stack)  # later ones start as they always did
                assert second.pid != pipes.pid
                assert len(_serving(first_fleet)) == 2

        loop.run_until_complete(first_session())
        loop.run_until_complete(transport.close())
    finally:
        loop.close()
    wait_for(lambda: not _serving(first_fleet), 10, "the sessions to end")
    assert len(persistent_masters(control)) == 1  # the master stays for the next run


def test_a_first_session_nobody_takes_ends_with_its_transport(
    first_fleet: Fleet, control: Path
) -> None:
    # The run ended before it asked for a session (an error, Ctrl-C): nothing stays running.
    transport = _transport(first_fleet, control)

    async def unclaimed() -> None:
        await transport.connect_early()
        wait_for(lambda: len(_serving(first_fleet)) == 1, 10, "the first session to start")
        await transport.close()

    asyncio.run(unclaimed())
    wait_for(lambda: not _serving(first_fleet), 10, "the unclaimed session to end")
