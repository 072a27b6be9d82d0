"""offload-hook: a builder that dies under the builds it runs, with more derivations accepted
for it waiting in the coordinator for its slot. Its death is one failure, said once to the
nix-build, however many of its builds found it. The waiting derivations learn of its backoff
from the one that found it dead and go elsewhere, without trying it again (they used to wait
for its slot on and on: nix-build hung)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from offload.fleet import Fleet, MemberSpec
from tests.helpers.fleets import drop_member, member_processes, private_fleet_fixture
from tests.helpers.hook_runs import leaves, start_nix_build
from tests.helpers.nix_files import nix_file
from tests.helpers.offload_run import wait_for
from tests.helpers.processes import stop

# A fast builder, worth waiting for, beside a slow one.
waiting_fleet = private_fleet_fixture(
    [MemberSpec("hwfast", 4.0, 2), MemberSpec("hwslow", 1.0, 1)], "ohw"
)


pytestmark = pytest.mark.usefixtures("coordinators_stopped")

# A build's work: 4 s on the fast builder (where the test drops it, mid-build), none on the slow.
ON_FAST = "case $(/bin/cat /etc/nix/offload-speed) in 4) /bin/sleep 4;; esac; "


def _fast_dropped(
    fleet: Fleet, tmp_path: Path, file: Path, processes: int, what: str
) -> tuple[subprocess.Popen[str], str, str]:
    """``nix-build -j0`` of ``file`` with the hook, the fast builder dropped once at least
    ``processes`` of its processes run "sleep 4": (the nix-build, its stdout, its stderr)."""
    proc = start_nix_build(fleet, tmp_path, file, "-j0")
    fast = fleet.member("hwfast")
    try:
        wait_for(
            lambda: sum("sleep 4" in cmd for _, cmd in member_processes(fast)) >= processes,
            60,
            what,
        )
        drop_member(fast)
        out, err = proc.communicate(timeout=150)
    finally:
        stop(proc)
    return proc, out, err


def test_waiting_derivations_leave_a_builder_that_died_without_trying_it(
    waiting_fleet: Fleet, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    # Each leaf says it started (on the host's /tmp, shared with the members), then works.
    file = nix_file(tmp_path, leaves(4, f"/bin/mkdir -p {started}; {ON_FAST}"))
    # Dropped once both its slots build (each a shell and its sleep): dropped while the
    # second was still starting there, that one's session was refused and told the builder's
    # failure first, under the suite's load, where the test means the running builds to.
    what = "two builds on the fast builder"
    proc, out, err = _fast_dropped(waiting_fleet, tmp_path, file, 4, what)
    assert proc.returncode == 0, err
    assert len(out.split()) == 4
    failed = [line for line in err.splitlines() if "builder 'hwfast' failed" in line]
    assert failed, err
    assert not [line for line in failed if "connection refused" in line], err


def test_a_builder_that_dies_under_two_builds_is_one_failure_said_once(
    waiting_fleet: Fleet, tmp_path: Path
) -> None:
    file = nix_file(tmp_path, leaves(3, ON_FAST))
    what = "two builds on the fast builder (each a shell and its sleep)"
    proc, out, err = _fast_dropped(waiting_fleet, tmp_path, file, 4, what)
    assert proc.returncode == 0, err
    assert len(out.split()) == 3
    failed = [line for line in err.splitlines() if "builder 'hwfast' failed" in line]
    assert len(failed) == 1, err
    backoff = json.loads((tmp_path / "state" / "backoff.json").read_text())
    assert backoff["hwfast"]["failures"] == 1
