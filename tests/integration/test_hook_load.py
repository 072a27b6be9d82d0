"""`offload-hook`'s coordinator gives a loaded builder fewer builds, with nix-build on the fleet.

One private member, "busy", with four slots on a kernel of its own: its ``/proc/loadavg`` and
boot id are bind-mounted over with text of ours in its mount namespace (the member spec's
``proc_overrides``, as tests/integration/test_builder_load.py does for ``offload build``), so
every session start there reports the load the test wrote. ``nix-build -j 0`` with
``offload-hook`` builds eight leaves, each writing when it starts and ends: with the member
idle, its four slots run at once; with 2.5 cores of load beyond its cores written there, the
coordinator cuts it to two slots at the first session start and never runs more than two
there, says so in a build's log (Nix prints it) and in ``loads.json`` for ``offload status``,
and takes the cut out of it when it ends.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from offload.fleet import Fleet, MemberSpec, client_argv
from offload.fleet.spec import proc_override_file
from offload.load import BOOT_ID_FILE, LOADAVG_FILE
from offload.load_state import LOADS_FILE, load_loads
from offload.procfs import running
from offload.slots import NIX_CURRENT_LOAD
from tests.helpers.fleets import private_fleet_fixture
from tests.helpers.nix_files import nix_file
from tests.helpers.offload_run import peak_running, stop_coordinators, wait_for

HOOK = str(Path(sys.executable).parent / "offload-hook")
CORES = len(os.sched_getaffinity(0))  # what nproc counts on the member (it inherits ours)
SLOTS = 4
LEAVES = 8
IDLE = "0.00 0.00 0.00 1/300 4242\n"
BUSY = f"{CORES + 2.5:.2f} {CORES + 1:.2f} 0.50 7/300 4242\n"

load_fleet = private_fleet_fixture(
    [
        MemberSpec(
            "busy",
            1,
            SLOTS,
            proc_overrides=((LOADAVG_FILE, IDLE), (BOOT_ID_FILE, str(uuid.UUID(int=0xB05E)))),
        )
    ],
    "ofhl",
    scope="module",
    doc="One member with 4 slots on a kernel of its own, whose load the test writes; each "
    "test leaves it idle again.",
)


def hook_build(fleet: Fleet, home: Path, log: Path) -> subprocess.CompletedProcess[str]:
    """``nix-build -j 0`` of ``LEAVES`` leaves with ``offload-hook``, as a client host of its
    own (``current-load`` and state under ``home``); each leaf logs its start and end."""
    stamp = "$(/bin/date +%s.%N)"
    job = f"echo start {stamp} >> {log}; /bin/sleep 1.5; echo end {stamp} >> {log}; echo > $out"
    file = nix_file(
        home, f'builtins.genList (i: mk "leaf-${{toString i}}" "{job}" {{}}) {LEAVES}\n'
    )
    argv = ["nix-build", str(file), "--no-out-link", "-j", "0", "--option", "build-hook", HOOK]
    argv += ["--option", "substituters", "", "--builders", f"@{fleet.machines_file}"]
    (home / "current-load").mkdir(parents=True)
    NIX_CURRENT_LOAD.mkdir(exist_ok=True)
    return subprocess.run(
        client_argv(home / "current-load", argv),
        env={**fleet.env(), "OFFLOAD_STATE_DIR": str(home / "state")},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_the_coordinator_places_fewer_builds_on_a_loaded_builder(
    load_fleet: Fleet, tmp_path: Path
) -> None:
    loadavg = proc_override_file(load_fleet.member("busy").root, 0)
    idle_home, busy_home = tmp_path / "idle", tmp_path / "busy"
    idle_home.mkdir()
    busy_home.mkdir()
    try:
        idle = hook_build(load_fleet, idle_home, tmp_path / "idle.log")
        assert idle.returncode == 0, idle.stderr
        loadavg.write_text(BUSY)  # in place: the member's bind mount follows the file
        busy = hook_build(load_fleet, busy_home, tmp_path / "busy.log")
        assert busy.returncode == 0, busy.stderr
        cut = load_loads([busy_home / "state" / LOADS_FILE])
    finally:
        loadavg.write_text(IDLE)
        stop_coordinators(idle_home / "state")
        stop_coordinators(busy_home / "state")
    assert len(idle.stdout.split()) == len(busy.stdout.split()) == LEAVES

    # Idle, the coordinator fills the member's four slots; loaded, two of them at most.
    stamps, idle_peak = peak_running(tmp_path / "idle.log")
    assert (stamps, idle_peak) == (2 * LEAVES, SLOTS)
    stamps, busy_peak = peak_running(tmp_path / "busy.log")
    assert stamps == 2 * LEAVES
    assert busy_peak <= SLOTS - 2

    said = f"load {CORES + 2.5:g} on {CORES} cores: 2 of {SLOTS} slots"
    told = f"offload: builder 'busy' is loaded: {said} for this host's builds"
    assert busy.stderr.count(told) == 1, busy.stderr
    assert "is loaded" not in idle.stderr
    assert {name: (e.slots, e.full, e.said) for name, e in cut.items()} == {
        "busy": (SLOTS - 2, SLOTS, said)
    }
    # The coordinator ended: its cut with it, and status shows none.
    assert load_loads([busy_home / "state" / LOADS_FILE]) == {}


def test_a_killed_coordinators_cut_is_not_shown_as_in_force(
    load_fleet: Fleet, tmp_path: Path
) -> None:
    # A coordinator SIGKILLed (the OOM killer) cannot take its cut out of loads.json; offload
    # status showed it as in force for as long as the file stayed, with no coordinator at all.
    loadavg = proc_override_file(load_fleet.member("busy").root, 0)
    state = tmp_path / "state"
    try:
        loadavg.write_text(BUSY)
        busy = hook_build(load_fleet, tmp_path, tmp_path / "busy.log")
        assert busy.returncode == 0, busy.stderr
        assert set(load_loads([state / LOADS_FILE])) == {"busy"}  # its coordinator lives
        (pid_file,) = state.glob("*.sock.pid")
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not running(pid), 10, "the coordinator to die")
    finally:
        loadavg.write_text(IDLE)
        stop_coordinators(state)
    assert (state / LOADS_FILE).exists()  # left behind: nobody could take it out
    assert load_loads([state / LOADS_FILE]) == {}
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "offload",
            "status",
            "--json",
            "--builders",
            f"@{load_fleet.machines_file}",
        ],
        env={**load_fleet.env(), "OFFLOAD_STATE_DIR": str(state)},
        input="",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    machines = {m["name"]: m for m in json.loads(shown.stdout)["machines"]}
    assert machines["busy"]["loaded"] is None
