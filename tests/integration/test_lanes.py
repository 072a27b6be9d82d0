"""Large uploads to a builder with ``compress=true`` take a second ssh connection of their own
(``offload.protocol.lanes``, ``open_lane``), against the shared fleet and real Nix 2.8: both
connections carry paths, every path arrives whole, and no ssh process is left behind."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from offload.config.machines import Machine
from offload.fleet import Fleet
from offload.protocol import lanes
from offload.protocol.serve import StoreClient
from offload.scheduler.run import send_closure
from offload.transport.links import LocalLink, MachineLink
from offload.transport.sessions import open_lane
from tests.helpers.fleets import fleet_machine
from tests.helpers.processes import children
from tests.helpers.store_paths import added_random

MEMBER = "medium"
SIZE = 1 << 20


def _compressed(fleet: Fleet) -> Machine:
    machine = fleet_machine(fleet, MEMBER)
    return dataclasses.replace(machine, params={**machine.params, "compress": "true"})


def _hashes(argv: list[str], env: dict[str, str] | None = None) -> list[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=True, env=env).stdout.split()


def _ssh() -> set[int]:
    """The ssh client processes of this test process."""
    return {pid for pid, cmd in children(os.getpid()) if Path(cmd.split()[0]).name == "ssh"}


def test_a_large_upload_takes_a_second_connection(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Lanes sized for a quick test: 1 MiB paths are large, 3 MiB of them pay for a login.
    monkeypatch.setattr(lanes, "LANE_PATH", SIZE)
    monkeypatch.setattr(lanes, "LANE_BYTES", 3 * SIZE)
    paths = added_random(tmp_path, SIZE, 4, prefix="lane")
    machine = _compressed(fleet)
    env = fleet.env()
    lane_ssh: list[set[int]] = []

    @asynccontextmanager
    async def lane() -> AsyncIterator[tuple[StoreClient, StoreClient]]:
        async with open_lane(machine, env) as pair:
            lane_ssh.append(_ssh())
            yield pair

    async def go() -> tuple[int, int, set[int]]:
        link = MachineLink.from_machine(machine, env=env)
        async with link, LocalLink() as local:
            async with local.session() as src, link.session() as dst:
                assert link.ssh.target.compress
                before = _ssh()  # the run's own connection: its master and this session
                moved = await send_closure(src, dst, paths, lane=lane)
                left.update(_ssh() - before)
            return moved, link.stats.bytes_sent, lane_ssh[0] - before if lane_ssh else set()

    left: set[int] = set()
    moved, sent_first, lane_processes = asyncio.run(go())
    assert lane_processes  # a second connection of its own, opened for the copy
    assert left == set()  # and gone once the copy returned
    assert moved > 4 * SIZE
    # The run's own connection carried part of the bytes, the second lane the rest.
    assert 0 < sent_first < moved - SIZE // 2  # at least one path went the other way
    member = fleet.ssh_argv(MEMBER, "nix-store", "--query", "--hash", *paths)
    assert _hashes(member, fleet.env()) == _hashes(["nix-store", "--query", "--hash", *paths])
    assert _ssh() == set()  # the run's connection ended with its link


def test_small_uploads_stay_on_one_connection(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lanes, "LANE_PATH", SIZE)
    monkeypatch.setattr(lanes, "LANE_BYTES", 8 * SIZE)  # more than the paths
    paths = added_random(tmp_path, SIZE, 2, prefix="lane")
    machine = _compressed(fleet)
    opened: list[bool] = []

    @asynccontextmanager
    async def lane() -> AsyncIterator[tuple[StoreClient, StoreClient]]:
        opened.append(True)
        async with open_lane(machine, fleet.env()) as pair:
            yield pair

    async def go() -> int:
        link = MachineLink.from_machine(machine, env=fleet.env())
        async with link, LocalLink() as local:
            async with local.session() as src, link.session() as dst:
                await send_closure(src, dst, paths, lane=lane)
            return link.stats.bytes_sent

    sent = asyncio.run(go())
    assert opened == []
    assert sent > 2 * SIZE
