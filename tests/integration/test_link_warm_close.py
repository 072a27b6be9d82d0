"""A builder's link at the start and the end of a run, against a real fleet member: build
sessions opened ahead hold the builder's slots and serve the first builds, a builder whose slots
others hold is not waited for, and closing ends every session at once with nothing left there.

The module starts its own one-member fleet (two slots) and stops it at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from offload.fleet import Fleet, MemberSpec
from offload.transport.links import MachineLink
from offload.transport.links.turns import LINGER
from offload.transport.wrapper import SLOT_DIRS
from tests.helpers.fleets import fleet_machine, private_fleet_fixture
from tests.helpers.flocks import held

warm_fleet = private_fleet_fixture(
    [MemberSpec("w1", 1, 2)],
    "oflw",
    scope="module",
    doc="w1, two slots, once for the module.",
)


def _link(fleet: Fleet) -> MachineLink:
    return MachineLink.from_machine(fleet_machine(fleet, "w1"), env=fleet.env())


def _slot_files(fleet: Fleet) -> list[Path]:
    slots = fleet.member("w1").root / SLOT_DIRS[0].lstrip("/")
    return [slots / f"slot-{i}" for i in range(2)]


@contextlib.contextmanager
def _holding(paths: list[Path]) -> Iterator[None]:
    """Hold ``paths``' flocks, as another client's sessions on the builder would."""
    fds = [os.open(path, os.O_RDWR | os.O_CLOEXEC) for path in paths]
    try:
        for fd in fds:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        for fd in fds:
            os.close(fd)


def _serving(fleet: Fleet) -> int:
    """nix-store processes running inside the member (its sshd's descendants)."""
    count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            root = (entry / "root" / "nix").stat()
        except OSError:
            continue
        if cmd[0].endswith(b"nix-store") and root == (fleet.member("w1").root / "nix").stat():
            count += 1
    return count


async def _until(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def test_build_sessions_opened_ahead_hold_the_slots_and_serve_the_first_builds(
    warm_fleet: Fleet,
) -> None:
    async def go() -> None:
        async with _link(warm_fleet) as link:
            await link.warm_builds(5)  # never more than the builder's slots
            assert (link.open_sessions, link.stats.sessions_opened) == (2, 2)
            assert all(held(path) for path in _slot_files(warm_fleet))
            async with link.build_session() as one, link.build_session() as two:
                assert one is not two
                assert await one.query_valid_paths([]) == set()
                assert await two.query_valid_paths([]) == set()
            assert link.stats.sessions_opened == 2  # both builds took the ones opened ahead
            await link.warm_builds(2)
            assert link.stats.sessions_opened == 2  # lingering already: nothing more
            # Unused, they let go of the slots LINGER s later, as a build's session does.
            assert await _until(lambda: link.open_sessions == 0, LINGER + 10)
            assert not any(held(path) for path in _slot_files(warm_fleet))

    asyncio.run(go())


def test_a_builder_whose_slots_others_hold_is_not_waited_for(warm_fleet: Fleet) -> None:
    async def go() -> None:
        async with _link(warm_fleet) as link:
            await link.warm_builds(1)  # makes the slot files
            assert await _until(lambda: link.open_sessions == 0, LINGER + 10)
            with _holding(_slot_files(warm_fleet)):
                await asyncio.wait_for(link.warm_builds(2), 10)
                assert link.open_sessions == 0

    asyncio.run(go())


def test_closing_ends_every_session_at_once_and_leaves_nothing_on_the_builder(
    warm_fleet: Fleet,
) -> None:
    async def go() -> Path | None:
        link = _link(warm_fleet)
        async with contextlib.AsyncExitStack() as lent:
            for _ in range(link.max_sessions):
                client = await lent.enter_async_context(link.session())
                assert await client.query_valid_paths([]) == set()
        await link.warm_builds(2)
        assert link.open_sessions == link.max_sessions + 2
        assert _serving(warm_fleet) >= link.open_sessions
        control = link.ssh.control_path
        await asyncio.wait_for(link.aclose(), 20)
        assert link.open_sessions == 0
        return control

    control = asyncio.run(go())
    assert control is not None
    assert not control.parent.exists()  # the master left, its private directory removed
    assert _serving(warm_fleet) == 0
    assert not any(held(path) for path in _slot_files(warm_fleet))


def test_a_released_master_serves_its_open_sessions_and_ends_with_them(warm_fleet: Fleet) -> None:
    async def go() -> None:
        link = _link(warm_fleet)
        try:
            async with link.session() as client:
                master = link.ssh.master_pid
                assert master is not None
                link.ssh.release()  # what closing does when nothing is left to stop
                # The master ends only once its sessions have: this one still answers.
                assert await client.query_valid_paths([]) == set()
                assert Path(f"/proc/{master}").exists()
            await asyncio.wait_for(link.aclose(), 20)
            assert not Path(f"/proc/{master}").exists()
        finally:
            await link.aclose()

    asyncio.run(go())
    assert _serving(warm_fleet) == 0
