"""`offload-hook` moves an accepted derivation off a builder full of another client's builds.

A two-member fleet: "full" (speed 4) and "spare" (speed 2), one slot each. The test is the
other client: it holds full's slot on the builder itself (its ``slot-0`` under flock, as
another host's offload would). ``nix-build -j 0`` runs as if on a host of its own (its own
``current-load``), where the test also holds full's local slot, expected to free in a second:
so the hook accepts the derivation for full (its slot frees first and it is twice as fast)
and waits in its coordinator. Once the test frees the local slot, the coordinator finds full
full on the builder side, and the derivation waits in its dispatch until full has been full as
long as moving to spare costs (10 s of work: 2.5 s on full, 5 s on spare), then builds on
spare. Where it was built is proved by its output (the builder's speed file).
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload.fleet import Fleet, MemberSpec, client_argv
from offload.history.db import History
from offload.hook.decide import REMOTE_OVERHEAD
from offload.scheduler.run import DEFAULT_WORK
from offload.slot_holders import line_fields
from offload.slots import NIX_CURRENT_LOAD, SlotLocks, slot_key
from offload.transport.wrapper import SLOT_DIRS
from tests.helpers import processes
from tests.helpers.fleets import fleet_machine, private_fleet_fixture
from tests.helpers.flocks import held
from tests.helpers.nix_files import SPEED, nix_file
from tests.helpers.offload_run import stop_coordinators

HOOK = str(Path(sys.executable).parent / "offload-hook")
FAST, SPARE = 4.0, 2.0

moves_fleet = private_fleet_fixture(
    [MemberSpec("full", FAST, 1), MemberSpec("spare", SPARE, 1)],
    "ofmv",
    doc="A fast member another client fills, and a slower spare one.",
)


@pytest.fixture
def builder_slot(moves_fleet: Fleet) -> Iterator[Path]:
    """Full's one slot on the builder, held by the test (another client) until it ends."""
    locks = moves_fleet.dir / "full" / "nix" / "var" / "nix" / Path(SLOT_DIRS[0]).name
    locks.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = locks / "slot-0"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield path
    finally:
        os.close(fd)


def hook_client(fleet: Fleet, home: Path, file: Path) -> subprocess.Popen[str]:
    """``nix-build FILE -j 0`` with ``offload-hook``, with a ``current-load`` of its own."""
    argv = ["nix-build", str(file), "--no-out-link", "-j", "0", "--option", "build-hook", HOOK]
    argv += ["--option", "substituters", "", "--builders", f"@{fleet.machines_file}"]
    NIX_CURRENT_LOAD.mkdir(exist_ok=True)
    return processes.start(
        client_argv(home / "current-load", argv),
        env={**fleet.env(), "OFFLOAD_STATE_DIR": str(home / "state")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_an_accepted_build_moves_off_a_full_builder_and_finishes_elsewhere(
    moves_fleet: Fleet, builder_slot: Path, tmp_path: Path
) -> None:
    file = nix_file(tmp_path, f'[ (mk "moved" "{SPEED} > $out" {{}}) ]\n')
    home = tmp_path / "client"
    (home / "current-load").mkdir(parents=True)
    full = fleet_machine(moves_fleet, "full")
    local = SlotLocks(home / "current-load")
    fd = local.try_acquire(slot_key(full.uri), 1, until=time.time() + 1)
    assert fd is not None
    hooked = hook_client(moves_fleet, home, file)
    watchdog = threading.Timer(120, hooked.kill)
    watchdog.start()
    seen: list[str] = []
    try:
        processes.read_until(hooked, f"on '{full.uri}'", seen)  # accepted for full, as Nix says
        os.close(fd)
        fd = None
        processes.read_until(hooked, "every slot there is held by another client", seen)
        # The hook holds full's slot here meanwhile, and says what it builds in it (`offload
        # status` reads it).
        said = line_fields((home / "current-load" / f"{slot_key(full.uri)}-0").read_text())
        assert (said["by"], said["drv"]) == ("hook", "moved")
        moved = processes.read_until(hooked, "offload: moved from builder 'full' to 'spare'", seen)
        out, err = hooked.communicate(timeout=60)
        # Still held by the other client: the build did not wait for full.
        assert held(builder_slot)
    finally:
        watchdog.cancel()
        processes.stop(hooked)
        if fd is not None:
            os.close(fd)
        stop_coordinators(home / "state")
    assert hooked.returncode == 0, "".join(seen) + err
    # Said once, not at each look that found full full (team tester: four lines in a row).
    assert ("".join(seen) + err).count("offload: builder 'full': every slot there is held") == 1
    # The coordinator, stopped, took its want marker off full with it (left for other
    # clients' sessions to delete 10 minutes later).
    assert not list(builder_slot.parent.glob("want-*"))
    assert Path(out.split()[0]).read_text().strip() == str(int(SPARE))
    assert moves_fleet.store_has("spare", out.split()[0])
    assert not moves_fleet.store_has("full", out.split()[0])
    # It waited as long as moving costs (rent-or-buy), not less.
    waited = float(re.search(r"for ([0-9.]+) s", moved).group(1))  # type: ignore[union-attr]
    cost = (REMOTE_OVERHEAD + DEFAULT_WORK / SPARE) - (REMOTE_OVERHEAD + DEFAULT_WORK / FAST)
    assert waited >= cost - 0.05
    # History keeps that wait, as an offload build copy's: it showed '-' for every hook build.
    with History(home / "state" / "history.sqlite") as history:
        (record,) = history.builds()
    assert record.machine == "spare"
    assert record.phases[0].phase == "waiting"
    assert record.phase_seconds("waiting") >= waited
    # Its time, which estimates learn from, is its build's alone (review: the wait was in it).
    (building,) = [p for p in record.phases if p.phase == "building"]
    assert (building.started, building.finished) == (record.started, record.finished)
    assert record.finished - record.started < waited
