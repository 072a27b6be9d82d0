"""`offload-hook` under real Nix 2.8, stopped: nix-build ended by SIGTERM or Ctrl-C mid-build.

What a stopped build leaves: nothing running on the builder, no half-written output in its
store, and in the history a build said cancelled. Two members of one slot each; where the build
ran is read from the members' stores and processes (``tests.helpers.fleets``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from offload.fleet import Fleet, MemberSpec
from offload.history.db import History
from offload.report.model import load_hook_model
from tests.helpers.fleets import private_fleet_fixture
from tests.helpers.hook_runs import remote_leftovers, start_nix_build
from tests.helpers.nix_files import nix_file
from tests.helpers.offload_run import wait_for
from tests.helpers.processes import stop

MEMBERS = ("hs1", "hs2")

stop_fleet = private_fleet_fixture(
    [MemberSpec(name, 1.0, 1) for name in MEMBERS], "ofhs", scope="module"
)


pytestmark = pytest.mark.usefixtures("coordinators_stopped")


@pytest.mark.parametrize("coordinator", ["1", "0"], ids=["coordinator", "in-process"])
def test_sigterm_mid_build_leaves_nothing_on_the_builder(
    stop_fleet: Fleet, tmp_path: Path, coordinator: str
) -> None:
    marker = tmp_path / "started"
    file = nix_file(
        tmp_path, f'[ (mk "long" "echo x > {marker}; /bin/sleep 60; echo > $out" {{}}) ]\n'
    )
    proc = start_nix_build(
        stop_fleet, tmp_path, file, "-j0", output=False, OFFLOAD_HOOK_COORDINATOR=coordinator
    )
    try:
        wait_for(marker.exists, 60, "the remote build to start")
        assert remote_leftovers(stop_fleet, MEMBERS)
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        wait_for(lambda: not remote_leftovers(stop_fleet, MEMBERS), 20, "the builder to be clean")
    finally:
        stop(proc)
    assert proc.returncode != 0


def test_ctrl_c_mid_build_leaves_no_partial_output_on_the_builder(
    stop_fleet: Fleet, tmp_path: Path
) -> None:
    # The coordinator stopped the build there, and its half-written output stayed in the
    # builder's store (unregistered, until a garbage collection) where offload build's goes.
    marker = tmp_path / "started"
    script = f"/bin/mkdir $out; echo data > $out/data; echo x > {marker}; /bin/sleep 60"
    file = nix_file(tmp_path, f'[ (mk "partial" "{script}" {{}}) ]\n')
    out = out_path_of(file)
    proc = start_nix_build(stop_fleet, tmp_path, file, "-j0", output=False)
    try:
        wait_for(marker.exists, 60, "the remote build to start")
        (where,) = [m for m in MEMBERS if (stop_fleet.member(m).root / out.lstrip("/")).exists()]
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
        wait_for(lambda: not remote_leftovers(stop_fleet, MEMBERS), 20, "the builder to be clean")
    finally:
        stop(proc)
    assert proc.returncode != 0
    left = stop_fleet.member(where).root / out.lstrip("/")
    wait_for(lambda: not left.exists(), 10, f"{left} to be deleted")


def out_path_of(file: Path) -> str:
    """The output path of ``file``'s one derivation (a list of one)."""
    drv = subprocess.run(
        ["nix-instantiate", str(file)], capture_output=True, text=True, check=True
    ).stdout.split()[0]
    return subprocess.run(
        ["nix-store", "-q", "--outputs", drv], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_a_build_stopped_by_ctrl_c_is_in_the_history_as_cancelled(
    stop_fleet: Fleet, tmp_path: Path
) -> None:
    # nix-build stopped by Ctrl-C: its builds on the builders were stopped and left no trace in
    # history (offload history, offload report --hook), as if nothing had run there.
    marker = tmp_path / "started"
    file = nix_file(
        tmp_path, f'[ (mk "stopped" "echo x > {marker}; /bin/sleep 60; echo > $out" {{}}) ]\n'
    )
    proc = start_nix_build(stop_fleet, tmp_path, file, "-j0", output=False)
    try:
        wait_for(marker.exists, 60, "the remote build to start")
        begun = time.time()
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        stop(proc)

    def kept() -> list[tuple[str, str]]:
        with History(tmp_path / "state" / "history.sqlite") as history:
            return [(b.name, b.status) for b in history.builds(hook=True)]

    # Written by the coordinator's history thread once the build has stopped.
    wait_for(lambda: bool(kept()), 20, "the stopped build in the history")
    with History(tmp_path / "state" / "history.sqlite") as history:
        (build,) = history.builds(hook=True)
        report = load_hook_model(history, since=None)  # offload report --hook
    assert (build.name, build.status, build.machine in MEMBERS) == ("stopped", "cancelled", True)
    assert build.started < begun < build.finished
    # Its phases up to the stop and why it ended, as offload build keeps a stopped copy's:
    # they were none (every phase column '-') and no reason.
    assert [p.phase for p in build.phases] == ["waiting", "sending", "building"]
    assert build.phases[-1].started < begun < build.phases[-1].finished == build.finished
    assert build.error is not None
    assert build.error.startswith("stopped before it ended: Nix gave the build up")
    assert [b.build for lane in report.lanes for b in lane.bars] == [build]
    assert report.run.outcome == "interrupted"
