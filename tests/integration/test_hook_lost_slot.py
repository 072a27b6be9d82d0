"""offload-hook's coordinator: a builder lost under an accepted build lets its slot on this
host go before the build waits for one elsewhere. Held on (the rebuild ran inside it), the dead
builder's only slot read busy to every client on this host, the hook's own next decisions
and ``offload build`` included, for as long as the rebuild took."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from offload.fleet import Fleet, MemberSpec
from offload.slots import SlotLocks, slot_key
from tests.helpers.fleets import drop_member, member_line, member_processes, private_fleet_fixture
from tests.helpers.hook_runs import start_nix_build
from tests.helpers.nix_files import nix_file
from tests.helpers.offload_run import wait_for
from tests.helpers.processes import stop

lost_fleet = private_fleet_fixture(
    [MemberSpec("hlfast", 4.0, 1), MemberSpec("hlslow", 1.0, 1)], "ohls"
)

pytestmark = pytest.mark.usefixtures("coordinators_stopped")


def test_a_lost_builders_slot_here_is_free_while_its_build_runs_elsewhere(
    lost_fleet: Fleet, tmp_path: Path
) -> None:
    on_slow, release = tmp_path / "on-slow", tmp_path / "release"
    # On the fast builder (dropped under it) 4 s; on the slow one it waits for the test's word.
    wait = f"i=0; until [ -e {release} ] || [ $i -ge 600 ]; do /bin/sleep 0.1; i=$((i + 1)); done"
    script = (
        "case $(/bin/cat /etc/nix/offload-speed) in "
        f"4) /bin/sleep 4;; 1) /bin/touch {on_slow}; {wait};; esac; echo > $out"
    )
    file = nix_file(tmp_path, f'mk "lostslot" "{script}" {{}}\n')
    fast_key = slot_key(member_line(lost_fleet, "hlfast").split()[0])
    slots = SlotLocks.default(tmp_path / "state", make=False)
    proc = start_nix_build(lost_fleet, tmp_path, file, "-j0")
    fast = lost_fleet.member("hlfast")
    try:
        sleeping = "the build on the fast builder"
        wait_for(lambda: any("sleep 4" in c for _, c in member_processes(fast)), 60, sleeping)
        drop_member(fast)
        wait_for(on_slow.exists, 60, "the build to start again on the slow builder")
        fd = slots.try_acquire(fast_key, 1)  # the rebuild runs: the dead builder's slot is free
        if fd is not None:
            os.close(fd)
        release.touch()
        out, err = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(OSError):
            release.touch()
        stop(proc)
    assert fd is not None, "the lost builder's only slot here was still held"
    assert proc.returncode == 0, err
    assert len(out.split()) == 1
