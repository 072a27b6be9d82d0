"""Builders' ssh masters started before a run's links exist (``offload.transport.links.early``),
against the real fleet: the links take them over and reach the builder through them, one
connection each; those nobody takes are closed, at once when still in ssh's handshake (a
loopback listener that never speaks); host keys are checked as on any connection."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from pathlib import Path

import pytest

from offload.config.machines import parse_machines
from offload.errors import SshError
from offload.fleet import Fleet
from offload.transport.links import MachineLink, early
from offload.transport.persist import control_dir
from tests.helpers.fleets import established, fleet_machine, ssh_using


def test_a_link_takes_over_the_master_started_early_and_the_rest_are_closed(fleet: Fleet) -> None:
    env = fleet.env()
    fast, medium = fleet_machine(fleet, "fast"), fleet_machine(fleet, "medium")
    port = fleet.member("fast").port
    before = established(port)

    async def go() -> None:
        try:
            await early.start_masters([fast, medium], env=env)
            assert early.claim(fast, env={**env, "NIX_SSHOPTS": "-v"}) is None  # not its env
            taken = early.claim(fast, env=env)
            assert taken is not None
            assert taken.master_pid is not None  # running, maybe not connected yet
            assert early.claim(fast, env=env) is None  # taken once
            async with MachineLink.from_machine(fast, env=env, transport=taken) as link:
                assert link.ssh is taken
                assert await link.query_valid([]) == set()
                assert established(port) - before == 1  # its one connection: no second
                left = early.claim(medium, env=env)
                assert left is not None
                early._STARTED[medium, left._connect_timeout] = (left._env, left)  # put back
                control = left.control_path
                assert control is not None
                await early.close_unclaimed()
                assert not control.parent.exists()
                assert ssh_using(control.parent) == []
                assert early.claim(medium, env=env) is None
            assert taken.control_path is None
        finally:
            await early.close_unclaimed()

    asyncio.run(go())


def test_an_early_master_refused_for_its_host_key_fails_the_first_session(fleet: Fleet) -> None:
    machine = fleet_machine(fleet, "fast")
    other = (fleet.member("slow").root / "ssh_host_ed25519_key.pub").read_text()
    machine = dataclasses.replace(machine, public_host_key=other)
    env = fleet.env()
    # The fleet's ssh_config pins the right key too; use only the pinned known_hosts.
    env["NIX_SSHOPTS"] = f"-F /dev/null -o HostName=127.0.0.1 -p {fleet.member('fast').port}"

    async def go() -> None:
        try:
            await early.start_masters([machine], env=env)
            taken = early.claim(machine, env=env)
            assert taken is not None
            async with MachineLink.from_machine(machine, env=env, transport=taken) as link:
                with pytest.raises(SshError, match="Host key verification failed"):
                    await link.query_valid([])
        finally:
            await early.close_unclaimed()

    asyncio.run(go())


def _to_end(conn: socket.socket, said: bytes = b"") -> bytes:
    """What the peer sent (after ``said``) until it closed the connection."""
    while chunk := conn.recv(4096):
        said += chunk
    return said


def _banner(conn: socket.socket) -> bytes:
    """The peer's first line: once it came, that ssh waits for the server's banner."""
    said = b""
    while b"\n" not in said:
        chunk = conn.recv(4096)
        assert chunk, said  # an ssh that ends before its banner was not in its handshake
        said += chunk
    return said


def test_masters_still_in_their_handshake_are_closed_at_once(fleet: Fleet, tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        text = "".join(
            f"ssh://{user}@127.0.0.1:{port} {fleet.system} {fleet.client_key} 2 8\n"
            for user in ("root", "nobody", "builder")
        )
        machines, _ = parse_machines(text, source="m", system=fleet.system)
        env = {**fleet.env(), "NIX_SSHOPTS": "-F /dev/null -o BatchMode=yes"}
        held: list[tuple[socket.socket, bytes]] = []

        def accept(count: int) -> None:
            listener.settimeout(30)
            for _ in range(count):
                conn = listener.accept()[0]
                conn.settimeout(30)
                held.append((conn, _banner(conn)))

        async def go() -> float:
            try:
                # Two kept for the next run (as offload build's), one of the run's own.
                await early.start_masters(machines[:2], env=env, shared=control_dir(tmp_path))
                await early.start_masters(machines[2:], env=env)
                # Each ssh has sent its banner and waits for the server's now.
                await asyncio.to_thread(accept, 3)
                began = time.monotonic()
                await early.close_unclaimed()
                return time.monotonic() - began
            finally:
                await early.close_unclaimed()

        try:
            took = asyncio.run(go())
            # Each once waited 2 s for its stdin's EOF and 2 s more for its output's end.
            assert took < 2.0, took  # half of it: room for a loaded machine
            for conn, banner in held:  # every ssh is gone: its connection ends after its banner
                assert banner.startswith(b"SSH-2.0-"), banner
                assert _to_end(conn, banner) == banner
        finally:
            for conn, _ in held:
                conn.close()
