"""A builder's load, read from its serve session's start line, against real shells and the fleet.

The shell line itself is run with real ``sh`` here (with and without ``/proc`` and ``nproc``),
sessions are opened on real fleet members, and one private member is made to look busy: its
``/proc/loadavg`` and boot id are bind-mounted over with text of our own inside its mount
namespace (the member spec's ``proc_overrides``), the way LXCFS gives a container its own. A
build there can rewrite that text in place (the bind mount follows the file), so the member's
load changes mid-run.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from pathlib import Path

from offload.fleet import Fleet, MemberSpec
from offload.fleet.spec import proc_override_file
from offload.load import BOOT_ID_FILE, LOADAVG_FILE, RemoteLoad
from offload.transport.links import MachineLink
from offload.transport.wrapper import parse_born, parse_start_line, serve_command
from tests.helpers import processes
from tests.helpers.fleets import fleet_machine, private_fleet_fixture
from tests.helpers.nix_files import nix_file
from tests.helpers.offload_run import events, offload, peak_running

LOCAL_BOOT = Path(BOOT_ID_FILE).read_text().strip()
# What nproc counts: the cores this process may run on (members inherit it from us).
CORES = len(os.sched_getaffinity(0))
BUSY_BOOT = str(uuid.UUID(int=0xB05E))  # a kernel that is not this one
BUSY_SLOTS = 4


def start_line(argv: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run the serve wrapper around /bin/true: (its pid, its stdout, its stderr)."""
    proc = processes.start(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = proc.communicate(timeout=10)
    finally:
        processes.stop(proc)
    assert proc.returncode == 0, err
    return proc.pid, out, err


def wrapper() -> list[str]:
    # /bin/true takes the place of nix-store (and ignores --serve --write).
    return serve_command({"remote-program": "/bin/true"})


# -- the shell line ---------------------------------------------------------------------------


def test_the_start_line_reports_pid_cores_load_and_boot_id_first_on_stdout():
    pid, out, err = start_line(wrapper())
    assert err == ""  # stderr is the remote's log
    (line,) = out.splitlines()
    start = parse_start_line(line)
    assert start is not None
    reported, load = start
    assert reported == pid  # the shell exec'd the program: its pid is the program's
    assert load is not None
    assert (load.cores, load.boot_id) == (CORES, LOCAL_BOOT)
    assert load.load1 >= 0
    assert load.runnable is not None
    assert load.runnable >= 1  # the shell itself was running


def test_without_proc_the_pid_still_parses_and_the_load_is_unknown():
    # An empty /proc in a mount namespace of its own: like a builder that has none (macOS).
    hide = ["unshare", "-m", "--propagation", "private", "sh", "-c"]
    argv = [*hide, 'mount -t tmpfs none /proc && exec "$@"', "sh", *wrapper()]
    pid, out, err = start_line(argv)
    assert err == ""
    lines = out.splitlines()
    assert len(lines) == 1
    # No load, no boot id, no start time: the kill then goes by the pid alone.
    assert lines[0].split()[-5:] == ["-", "-", "start=-", "count=-", "slot=-"]
    # unshare and sh both exec, so the pid is still the started process's.
    assert parse_start_line(lines[0]) == (pid, None)
    assert parse_born(lines[0]) is None


def test_without_nproc_the_pid_still_parses_and_the_load_is_unknown():
    env = {"PATH": "/nonexistent"}  # no nproc; the program is named by its full path
    argv = ["/bin/sh", *wrapper()[1:]]
    pid, out, err = start_line(argv, env)
    assert err == ""
    (line,) = out.splitlines()
    assert parse_start_line(line) == (pid, None)


def test_told_the_cores_the_wrapper_reports_them_and_asks_no_nproc(tmp_path):
    # An nproc on PATH that would say 999: the wrapper asks it only when it was told nothing.
    fake = tmp_path / "nproc"
    fake.write_text("#!/bin/sh\necho 999\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    program = {"remote-program": "/bin/true"}
    for cores, reported in ((77, 77), (None, 999), (0, 999)):
        _, out, _ = start_line(serve_command(program, cores=cores), env)
        start = parse_start_line(out)
        assert start is not None
        assert start[1] is not None
        assert start[1].cores == reported
    # Anything but digits there (a wrapper run by something else) is not taken for the cores.
    argv = serve_command(program)
    argv[7] = "7;x"
    _, out, _ = start_line(argv, env)
    start = parse_start_line(out)
    assert start is not None
    assert start[1] is not None
    assert start[1].cores == 999


def test_the_wrapper_leaves_stdin_whole_to_the_program_it_execs():
    # The serve hello is written before the start line is read: nothing but the serve
    # program may consume it.
    argv = serve_command({"remote-program": "/bin/cat"})[:-2]  # cat without --serve --write
    proc = processes.start(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        out, _ = proc.communicate("the hello\n", timeout=10)
    finally:
        processes.stop(proc)
    first, rest = out.split("\n", 1)
    assert parse_start_line(first) is not None
    assert rest == "the hello\n"


# -- sessions on real members -------------------------------------------------------------------


async def _first_load(fleet: Fleet, name: str) -> tuple[RemoteLoad | None, RemoteLoad | None]:
    """link.load before any session, and after the first one."""
    async with MachineLink.from_machine(fleet_machine(fleet, name), env=fleet.env()) as link:
        before = link.load
        async with link.session() as client:
            assert client.usable
        return before, link.load


async def _later_session_told_cores(fleet: Fleet, name: str) -> tuple[int | None, int | None]:
    """The cores a link's transport knows before its first session, and after it."""
    async with MachineLink.from_machine(fleet_machine(fleet, name), env=fleet.env()) as link:
        before = link.ssh.cores
        await link.warm(1)
        after = link.ssh.cores
        async with link.session() as one, link.session() as two:  # the second: told them
            assert one.usable
            assert two.usable
        assert link.load is not None
        assert link.load.cores == CORES
        return before, after


def test_a_links_later_sessions_are_told_the_cores_the_first_reported(fleet):
    assert asyncio.run(_later_session_told_cores(fleet, "medium")) == (None, CORES)


def test_a_session_tells_its_link_the_members_load(fleet):
    before, load = asyncio.run(_first_load(fleet, "medium"))
    assert before is None
    assert load is not None
    # Members are sshd processes on this host: this kernel, these cores.
    assert load.cores == CORES
    assert load.boot_id == LOCAL_BOOT


def busy_member(loadavg: str) -> MemberSpec:
    """A member with ``BUSY_SLOTS`` slots on another kernel, whose /proc/loadavg is ``loadavg``."""
    overrides = ((LOADAVG_FILE, loadavg), (BOOT_ID_FILE, BUSY_BOOT + "\n"))
    return MemberSpec("busy", 1, BUSY_SLOTS, proc_overrides=overrides)


BUSY_LOADAVG = f"{CORES + 2.5:.2f} {CORES + 1:.2f} 0.50 7/300 4242\n"
busy_fleet = private_fleet_fixture(
    [busy_member(BUSY_LOADAVG)],
    "oflb",
    doc="One member with 4 slots that reports 2.5 cores' worth of load beyond its cores.",
)


def test_a_busy_member_gets_fewer_slots_and_the_run_stays_within_them(busy_fleet, tmp_path):
    _, load = asyncio.run(_first_load(busy_fleet, "busy"))
    assert load == RemoteLoad(CORES, CORES + 2.5, 7, BUSY_BOOT)
    # Only the member sees the fake files: this host's own are untouched.
    assert Path(BOOT_ID_FILE).read_text().strip() == LOCAL_BOOT

    log = tmp_path / "log"
    stamp = "$(/bin/date +%s.%N)"
    script = f"echo start {stamp} >> {log}; /bin/sleep 0.5; echo end {stamp} >> {log}; echo > $out"
    file = nix_file(tmp_path, f'builtins.genList (i: mk "j-${{toString i}}" "{script}" {{}}) 6\n')
    builders = ("--builders", f"@{busy_fleet.machines_file}", "-j", "0")
    done = offload(busy_fleet, tmp_path, file, *builders, "--no-out-link", "--json")
    assert done.returncode == 0, done.stderr

    records = events(done.stdout)
    (loaded,) = [e for e in records if e["event"] == "machine" and e["state"] == "loaded"]
    # 2.5 cores of load beyond its cores: two whole cores, two of its four slots.
    assert (loaded["machine"], loaded["slots"]) == ("busy", BUSY_SLOTS - 2)
    assert f"2 of {BUSY_SLOTS} slots" in loaded["message"]
    assert records[0]["event"] == "run_started"  # the load was known before; told after it
    built = [e for e in records if e["event"] == "job_finished" and e["status"] == "built"]
    assert len(built) == 6
    assert {e["machine"] for e in built} == {"busy"}

    stamps, peak = peak_running(log)
    assert stamps == 12
    assert peak <= BUSY_SLOTS - 2


IDLE_LOADAVG = "0.00 0.00 0.00 1/300 4242\n"
turning_fleet = private_fleet_fixture(
    [busy_member(IDLE_LOADAVG)],
    "oflt",
    doc="One member with 4 slots, idle at first: a build there makes it report load.",
)


def test_a_load_that_rises_mid_run_cuts_the_builds_placed_there_after_it(turning_fleet, tmp_path):
    loadavg = proc_override_file(turning_fleet.member("busy").root, 0)
    log = tmp_path / "log"
    stamp = "$(/bin/date +%s.%N)"
    # flip makes the member report 2.5 cores beyond its cores from then on (written in place:
    # the bind mount follows the file), and takes longer than the sessions opened ahead of the
    # run linger, so the builds after it open sessions of their own, whose start lines say so.
    flip = f"/bin/printf '{BUSY_LOADAVG.strip()}\\n' > {loadavg}; /bin/sleep 1.5; echo > $out"
    job = f"echo start {stamp} $name >> {log}; /bin/sleep 0.5; echo end {stamp} >> {log}"
    each = f'mk "j-${{toString i}}" "{job}; echo > $out" {{ inherit flip; }}'
    body = f'let flip = mk "flip" "{flip}" {{}}; in\nbuiltins.genList (i: {each}) 12\n'
    file = nix_file(tmp_path, body)
    builders = ("--builders", f"@{turning_fleet.machines_file}", "-j", "0")
    done = offload(turning_fleet, tmp_path, file, *builders, "--no-out-link", "--json")
    assert done.returncode == 0, done.stderr
    assert loadavg.read_text() == BUSY_LOADAVG

    records = events(done.stdout)
    built = [e for e in records if e["event"] == "job_finished" and e["status"] == "built"]
    assert len(built) == 13
    assert {e["machine"] for e in built} == {"busy"}
    (loaded,) = [e for e in records if e["event"] == "machine" and e["state"] == "loaded"]
    assert (loaded["machine"], loaded["slots"]) == ("busy", BUSY_SLOTS - 2)
    assert loaded["message"].endswith(f"2 of {BUSY_SLOTS} slots")
    # The builds placed after the cut: their first phase came after it.
    placed: dict[str, float] = {}
    for e in records:
        if e["event"] == "job_phase":
            placed.setdefault(e["name"], e["time"])
    after = {name for name, at in placed.items() if at > loaded["time"]}
    assert len(after) >= 6

    # Mid-run: the member was placed on under an idle report first (flip itself). Whether the
    # first wave after flip is placed before or after the cut depends on when their sessions'
    # start lines arrive (sessions opened ahead), so only the builds placed after it are held
    # to the cut.
    assert placed["flip"] < loaded["time"]
    for name in after:
        assert _running_at_start(log, name) <= BUSY_SLOTS - 2, name


def _running_at_start(log: Path, name: str) -> int:
    """How many builds ran (``name``'s own included) when ``name`` started."""
    lines = [line.split() for line in log.read_text().splitlines()]
    (start,) = [float(t) for kind, t, *rest in lines if kind == "start" and rest == [name]]
    starts = sum(1 for kind, t, *_ in lines if kind == "start" and float(t) <= start)
    ends = sum(1 for kind, t, *_ in lines if kind == "end" and float(t) <= start)
    return starts - ends
