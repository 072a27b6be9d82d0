"""A client killed with SIGKILL mid-build: its build stops on the builder and frees its slot.

Nothing of offload's runs on the builder to notice, and nothing needs to (OpenSSH 9.2, Nix 2.8;
the module docstring of ``offload.transport.ssh`` has the chain): the killed process's pipes to
its ssh sessions close, the ssh master passes that on as EOF on each session's stdin, and Nix's
serve program and daemon watch their stdin for that hang-up while they build: they interrupt the
build, kill its processes and exit, which lets go of the slot lock. Then the sessions' ssh
processes and the master exit by themselves. Held here to a deadline for ``offload build`` over
ssh:// and ssh-ng://, and for ``offload-hook`` when nix-build or the coordinator is killed.

A client host that goes silent (suspended: its processes frozen, nothing closed) is noticed only
by the builder's sshd asking it (``ClientAliveInterval``, which ``offload setup builder`` sets):
then sshd drops the connection, which closes the sessions' stdin all the same.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from offload.fleet import Fleet, Member, MemberSpec
from offload.procfs import running
from offload.transport.persist import control_dir
from offload.transport.wrapper import SLOT_DIRS
from tests.helpers import processes
from tests.helpers.fleets import member_processes, persistent_masters, private_fleet_fixture
from tests.helpers.flocks import held
from tests.helpers.nix_files import marker_script, nix_file
from tests.helpers.offload_run import (
    offload_argv,
    offload_env,
    stop_coordinators,
    wait_for,
    wait_for_marker,
)

SLOTS = 2
# "At once", with room for a loaded machine (it takes well under a second); the build itself
# would run for ten minutes.
STOPPED_WITHIN = 10.0
killed_fleet = private_fleet_fixture(
    [MemberSpec("shared", 1, SLOTS)],
    "oflk",
    scope="module",
    doc="One member with builder-side slots; every test leaves them free again.",
)


def slot_files(fleet: Fleet) -> list[Path]:
    locks = fleet.member("shared").root / "nix" / "var" / "nix" / Path(SLOT_DIRS[0]).name
    return [locks / f"slot-{i}" for i in range(SLOTS)]


def held_slots(fleet: Fleet) -> list[Path]:
    return [path for path in slot_files(fleet) if path.exists() and held(path)]


def long_build(tmp_path: Path) -> tuple[Path, Path, str]:
    """A silent build that would run for ten minutes: (its file, its marker, its sleep's
    command line, unique to this test)."""
    marker = tmp_path / "running"
    sleep = f"/bin/sleep 600.{uuid.uuid4().int % 10**6:06d}"
    script = marker_script(marker, f"{sleep}; echo > $out")
    return nix_file(tmp_path, f'{{ long = mk "long" "{script}" {{}}; }}\n'), marker, sleep


def on_member(fleet: Fleet, text: str) -> list[str]:
    """Command lines of the member's processes that contain ``text``."""
    return [cmd for _, cmd in member_processes(fleet.member("shared")) if text in cmd]


def assert_stopped(fleet: Fleet, sleep: str, ssh: list[tuple[int, str]]) -> None:
    """The build is gone from the member, its slot is free, and the ssh processes ``ssh`` of
    the killed client have exited, each within ``STOPPED_WITHIN`` s of the kill."""
    wait_for(lambda: not on_member(fleet, sleep), STOPPED_WITHIN, "the build to stop")
    wait_for(lambda: not held_slots(fleet), STOPPED_WITHIN, "the slot to be free")
    wait_for(
        lambda: not any(running(pid) for pid, _ in ssh),
        STOPPED_WITHIN,
        f"the client's ssh processes to exit: {ssh}",
    )


def start_build(fleet: Fleet, tmp_path: Path, file: Path, machines: Path) -> subprocess.Popen[str]:
    argv = offload_argv(file, "-A", "long", "--builders", f"@{machines}", "-j", "0")
    return processes.start(
        [*argv, "--no-out-link"],
        env=offload_env(fleet, tmp_path),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("scheme", ["ssh", "ssh-ng"])
def test_offload_build_killed_mid_build_stops_it_and_frees_its_slot(killed_fleet, tmp_path, scheme):
    machines = tmp_path / "machines"
    machines.write_text(killed_fleet.machines_file.read_text().replace("ssh://", f"{scheme}://"))
    file, marker, sleep = long_build(tmp_path)
    proc = start_build(killed_fleet, tmp_path, file, machines)
    try:
        wait_for_marker(marker, proc, 60)
        assert held_slots(killed_fleet)
        assert on_member(killed_fleet, sleep)
        ssh = [(pid, cmd) for pid, cmd in processes.children(proc.pid) if cmd.startswith("ssh ")]
        assert any("ControlMaster=yes" in cmd for _, cmd in ssh)  # the master
        assert any("ControlMaster=no" in cmd for _, cmd in ssh)  # its sessions
        proc.send_signal(signal.SIGKILL)  # offload alone: its ssh run in sessions of their own
        proc.wait()
        assert_stopped(killed_fleet, sleep, ssh)
        # Nothing of the killed client is left on the builder, idle sessions included.
        assert not on_member(killed_fleet, "--serve")
        assert not on_member(killed_fleet, "--stdio")
    finally:
        processes.stop(proc)


def hook_pid(state: Path) -> int:
    return int(next(state.glob("hook-*.pid")).read_text())


@pytest.mark.parametrize("victim", ["nix-build", "coordinator"])
def test_offload_hook_killed_mid_build_stops_it_and_frees_its_slot(killed_fleet, tmp_path, victim):
    file, marker, sleep = long_build(tmp_path)
    state = tmp_path / "state"
    hook = str(Path(sys.executable).parent / "offload-hook")
    argv = ["nix-build", str(file), "-A", "long", "--no-out-link", "-j", "0"]
    argv += ["--option", "build-hook", hook, "--option", "substituters", ""]
    proc = processes.start(
        [*argv, "--builders", f"@{killed_fleet.machines_file}"],
        env={**killed_fleet.env(), "OFFLOAD_STATE_DIR": str(state)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_marker(marker, proc, 60)
        assert held_slots(killed_fleet)
        coordinator = hook_pid(state)
        # The coordinator's sessions to the member (its persistent master is not its child).
        ssh = [(p, cmd) for p, cmd in processes.children(coordinator) if cmd.startswith("ssh ")]
        assert ssh
        os.kill(proc.pid if victim == "nix-build" else coordinator, signal.SIGKILL)
        if victim == "coordinator":
            # Gone without removing its pid file: never signal whatever takes that pid next.
            next(state.glob("hook-*.pid")).unlink()
        assert_stopped(killed_fleet, sleep, ssh)
        if victim == "coordinator":
            assert not on_member(killed_fleet, "--serve")  # its idle sessions too
    finally:
        processes.stop(proc)
        stop_coordinators(state)


# -- a client host gone silent -----------------------------------------------------------------

alive_fleet = private_fleet_fixture(
    [MemberSpec("shared", 1, SLOTS)],
    "oflv",
    doc="One member with builder-side slots, for a test that changes its sshd's settings.",
)


def listening(pid: int) -> set[str]:
    """The sockets ``pid`` holds (an sshd listener's are its listening ones)."""
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            link = str(fd.readlink())
            if link.startswith("socket:"):
                found.add(link)
    return found


def ask_silent_clients(member: Member, interval: int, count: int) -> None:
    """Give the member's sshd ``offload setup builder``'s ClientAlive lines (shorter), and wait
    until it runs with them: on SIGHUP sshd executes itself again and listens anew."""
    config = member.root / "sshd_config"
    lines = f"ClientAliveInterval {interval}\nClientAliveCountMax {count}\n"
    config.write_text(config.read_text() + lines)
    before = listening(member.pid)
    os.kill(member.pid, signal.SIGHUP)
    wait_for(lambda: bool(listening(member.pid) - before), 10, "sshd to listen again")


def test_a_client_host_gone_silent_loses_its_build_and_slot_to_sshd_keepalives(
    alive_fleet, tmp_path
):
    ask_silent_clients(alive_fleet.member("shared"), 1, 2)
    file, marker, sleep = long_build(tmp_path)
    proc = start_build(alive_fleet, tmp_path, file, alive_fleet.machines_file)
    frozen = [proc.pid]
    try:
        wait_for_marker(marker, proc, 60)
        assert held_slots(alive_fleet)
        # The client host suspended: nothing of it answers, nothing of it closes; the ssh
        # master the run keeps for the next (not its child) is frozen with it.
        frozen += [pid for pid, _ in processes.children(proc.pid)]
        frozen += persistent_masters(control_dir(tmp_path / "state"))
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        assert_stopped(alive_fleet, sleep, [])
        assert not on_member(alive_fleet, "--serve")
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        processes.stop(proc)
