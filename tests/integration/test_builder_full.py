"""A builder full of another client's builds: the run moves its build to a free machine.

A private fleet of two members of one speed and one slot each. The test holds the first
member's only builder-side slot file under flock itself, as another client's build session
would (the member's ``/nix/var/nix`` is a directory of the fleet, so the lock is the one the
member's own wrapper tries). The run places its build there first (it is listed first), finds
it full, and must build it on the other member within the build's own time plus start-up,
long before the slot is let go, saying that the member was full.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

from offload.fleet import MemberSpec
from offload.transport.wrapper import SLOT_DIRS
from tests.helpers.fleets import private_fleet_fixture
from tests.helpers.nix_files import nix_file, out_path
from tests.helpers.offload_run import offload, offload_env

full_fleet = private_fleet_fixture(
    [MemberSpec("held", 2, 1), MemberSpec("spare", 2, 1)],
    "oflf",
    doc="Two members of one speed with one slot each; the test holds the first one's slot.",
)

BUILD = 1.0  # seconds the derivation sleeps
# Start-up, copying the source and the output, and the moves: generous on a loaded machine.
OVERHEAD = 20.0


def test_a_build_waiting_on_a_full_builder_moves_to_a_free_one(full_fleet, tmp_path):
    slots = full_fleet.dir / "held" / "nix" / "var" / "nix" / Path(SLOT_DIRS[0]).name
    slots.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(slots / "slot-0", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        script = f"/bin/sleep {BUILD}; echo moved > $out"
        file = nix_file(tmp_path, f'{{ moved = mk "moved" "{script}" {{}}; }}')
        begun = time.monotonic()
        done = offload(
            full_fleet,
            tmp_path,
            file,
            "--builders",
            f"@{full_fleet.machines_file}",
            "-j",
            "0",
            "--no-out-link",
            "--json",
            env=offload_env(full_fleet, tmp_path),
            timeout=120,
        )
        elapsed = time.monotonic() - begun
    finally:
        os.close(fd)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    full = [e for e in events if e["event"] == "machine" and e["state"] == "full"]
    assert [e["machine"] for e in full] == ["held"]
    ended = [(e["machine"], e["status"]) for e in events if e["event"] == "job_finished"]
    assert ("spare", "built") in ended
    assert ("held", "built") not in ended
    moved = [e for e in events if e["event"] == "job_finished" and e["status"] == "cancelled"]
    assert [e["machine"] for e in moved] == ["held"]
    assert "moved to spare" in moved[0]["error"]
    assert elapsed < BUILD + OVERHEAD
    assert Path(out_path(file, "moved")).read_text() == "moved\n"
