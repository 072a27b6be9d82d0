"""offload-hook's faults under real Nix 2.8, each said to the user and none stopping a build that
could go on: a --check with builders only, a coordinator killed mid-build, between derivations
or while Nix waits for its reply, notes on the machines for every nix-build, a history another
process holds locked or that is damaged."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from offload.backoff import load_backoff
from offload.fleet import Fleet, MemberSpec
from offload.history.db import History
from offload.procfs import running
from offload.transport.persist import location
from tests.helpers.fleets import private_fleet_fixture, stop_masters
from tests.helpers.hook_runs import (
    coordinator_pids,
    hook_env,
    leaves,
    nix_build,
    nix_build_argv,
    outputs,
    remote_leftovers,
    start_nix_build,
)
from tests.helpers.nix_files import SPEED, nix_file
from tests.helpers.offload_run import stop_coordinators, wait_for
from tests.helpers.processes import start, stop

MEMBERS = ("hf1", "hf2")

hook_fleet = private_fleet_fixture(
    [MemberSpec(name, 1.0, 1) for name in MEMBERS], "ohf", scope="module"
)


pytestmark = pytest.mark.usefixtures("coordinators_stopped")


def test_check_builds_again_on_a_builder_as_nix_s_hook_does(
    hook_fleet: Fleet, tmp_path: Path
) -> None:
    # The outputs are valid here: nothing comes home, and nothing is registered (an empty
    # registration failed every --check -j0).
    file = nix_file(tmp_path, f'mk "checked" "{SPEED} > $out" {{}}\n')
    (path,) = outputs(nix_build(hook_fleet, tmp_path, file, "-j0"))
    again = nix_build(hook_fleet, tmp_path, file, "-j0", "--check")
    assert again.returncode == 0, again.stderr
    assert again.stdout.split() == [path]


def test_each_nix_build_hears_of_a_builder_left_out(hook_fleet: Fleet, tmp_path: Path) -> None:
    # Said once per nix-build (not once a minute across them): the second build's user must
    # learn of it too.
    lines = hook_fleet.machines_file.read_text().splitlines()
    machines = tmp_path / "machines"
    machines.write_text("\n".join([*lines, lines[0]]) + "\n")
    for n in range(2):
        file = nix_file(tmp_path, leaves(2), name=f"run{n}.nix")
        done = nix_build(hook_fleet, tmp_path, file, "-j0", builders=f"@{machines}")
        outputs(done)
        said = [line for line in done.stderr.splitlines() if "listed twice" in line]
        assert len(said) == 1, done.stderr
        assert f"{machines}:{len(lines) + 1}" in said[0]


def test_a_note_on_the_builders_given_to_nix_build_names_no_nix_conf(
    hook_fleet: Fleet, tmp_path: Path
) -> None:
    # Nix sends the hook its builders setting whatever set it: here nix-build's --builders,
    # which the note called "nix.conf builders" (no nix.conf sets it).
    missing = tmp_path / "missing"
    file = nix_file(tmp_path, leaves(1))
    done = nix_build(hook_fleet, tmp_path, file, "-j1", builders=f"@{missing}")
    assert len(outputs(done)) == 1
    said = [line for line in done.stderr.splitlines() if str(missing) in line]
    expected = (
        f"offload-hook: Nix's builders setting:1: machines file {missing} does not exist; "
        "skipped, as Nix does"
    )
    assert said == [expected], done.stderr


# The local time each line of the coordinator's log starts with.
TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"

# How a coordinator ended, by what is known to the hook it left: it started it (its parent),
# or a hook before it did; and whether it wrote to its log. A pointer to its log, empty after
# a SIGKILL, was all it said.
NO_WORD = "it left no word in its log"
ENDED = {
    "SIGKILL": f"killed by SIGKILL; {NO_WORD}",
    "SIGKILL, a later hook": f"{NO_WORD}: killed by a signal? (another hook started it: how it"
    " ended is not known here)",
    # It ends once it stopped the build: how, the hook may know (it waits 1 s) or not.
    "SIGTERM": "its log: hook-coordinator.log in the state directory",
}


@pytest.mark.parametrize("how", list(ENDED))
def test_a_coordinator_killed_mid_build_is_said_to_the_user(
    hook_fleet: Fleet, tmp_path: Path, how: str
) -> None:
    # After "# accept" Nix shows only JSON log lines from the hook: a plain line was lost.
    marker = tmp_path / "started"
    long = f'mk "long" "/bin/cat ${{first}}; echo x > {marker}; /bin/sleep 60; echo > $out" {{}}'
    before = 'mk "first" "echo > $out" {}' if "later" in how else '"/dev/null"'
    file = nix_file(tmp_path, f"let first = {before}; in [ ({long}) ]\n")
    proc = start_nix_build(hook_fleet, tmp_path, file, "-j0", output=False)
    try:
        wait_for(marker.exists, 60, "the remote build to start")
        (pid,) = coordinator_pids(tmp_path / "state")
        os.kill(pid, signal.SIGTERM if how == "SIGTERM" else signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        stop(proc)
    assert proc.returncode != 0
    assert "@nix" not in err
    # Nobody interrupted nix-build: the builder's answer to the coordinator stopping its build
    # is no line of the build's (it was said as Nix's "error: interrupted by the user").
    assert "interrupted by the user" not in err
    said = [line for line in err.splitlines() if "the coordinator" in line]
    expected = {
        f"offload-hook: error: the coordinator stopped before the hook ended (pid {pid}, {ended})"
        for ended in (ENDED[how], f"exit status 0; {ENDED[how]}")
    }
    assert len(said) == 1, err
    assert said[0] in expected, err
    failed = err.splitlines()[err.splitlines().index(said[0]) + 1]
    assert failed.startswith("error: builder for '/nix/store/"), err
    assert failed.endswith("-long.drv' failed with exit code 1"), err
    state = tmp_path / "state"
    # Ended, its log whole: a coordinator stopped by SIGTERM mid-build stayed 15 s more and
    # then died with a traceback (its remote kill waited for its timeout).
    wait_for(lambda: not running(pid), 30, "the coordinator to exit")
    log = (state / "hook-coordinator.log").read_text()
    stopped = "offload coordinator: stopped by SIGTERM with 1 hook served\n"
    assert re.fullmatch(rf"{TIME} {stopped}" if how == "SIGTERM" else "", log), log
    wait_for(lambda: not remote_leftovers(hook_fleet, MEMBERS), 30, "the builder's build to stop")
    if how == "SIGTERM":
        # A build the coordinator stopped is cancelled, as one Nix stopped (Ctrl-C): it was
        # not kept, and its builder, answering "interrupted by the user", was backed off.
        assert load_backoff(state / "backoff.json", time.time()) == {}
        with History(state / "history.sqlite") as history:
            kept = [(b.name, b.status) for b in history.builds(hook=True)]
        assert kept == [("long", "cancelled")]


# A coordinator killed under strace is reapable by the hook that started it only once strace
# let it go: that hook may not know how it ended, only that it was its own.
NOT_REAPED = f"{NO_WORD}: killed by a signal? (not ended 1 s after it closed this hook's socket)"


def _taken_over(pid: int, ended: str = ENDED["SIGKILL"]) -> str:
    return (
        f"offload-hook: warning: the coordinator stopped (pid {pid}, {ended}); a new one decides"
        " in its place"
    )


# What a coordinator does as it starts (its interpreter's sitecustomize), and what the hook
# that started it says of that: "did not start (see <its log>)" was all, an empty log after a
# SIGKILL (the out-of-memory killer) too.
NOT_STARTED = {
    "killed": (
        "os.kill(os.getpid(), 9)",
        "was killed by SIGKILL before it listened; it left no word in its log",
    ),
    "exits": (
        "sys.stderr.write('no room\\n'); os._exit(3)",
        "exited with status 3 before it listened; see {state}/hook-coordinator.log",
    ),
}


@pytest.mark.parametrize("how", list(NOT_STARTED))
def test_a_coordinator_that_does_not_start_is_said_as_it_ended(
    hook_fleet: Fleet, tmp_path: Path, how: str
) -> None:
    code, ended = NOT_STARTED[how]
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        f"import os, sys\nif 'offload.hook.coordinator' in sys.orig_argv:\n    {code}\n"
    )
    file = nix_file(tmp_path, leaves(1))
    done = nix_build(hook_fleet, tmp_path, file, "-j0", PYTHONPATH=str(site))
    assert len(outputs(done)) == 1  # decided in the hook's own process
    said = [line for line in done.stderr.splitlines() if "no coordinator" in line]
    assert len(said) == 1, done.stderr
    pid = said[0].split("pid ", 1)[1].split(",", 1)[0]
    ended = ended.format(state=tmp_path / "state")
    assert said[0] == (
        f"offload-hook: warning: no coordinator (the coordinator, pid {pid}, {ended}); deciding"
        " in this process"
    )


def _another_coordinator(state: Path, killed: int) -> bool:
    return any(pid != killed for pid in coordinator_pids(state))


def test_a_coordinator_killed_between_derivations_is_one_line_and_a_new_one_goes_on(
    hook_fleet: Fleet, tmp_path: Path
) -> None:
    # a is declined (-j1: the local machine is as fast, with nothing to copy) and builds here;
    # the hook that declined it waits for Nix's next request (b's, once a is built) when its
    # coordinator is killed. That hook had Nix find it gone as it asked ("build hook died
    # unexpectedly: ...", b built here, and with -j0 nothing could build it); now it starts a
    # new coordinator at once, which decides b.
    shared = Path(tempfile.mkdtemp(prefix="ohf", dir="/tmp"))  # the local build user's too
    shared.chmod(0o777)
    wait = f"i=0; while [ ! -e {shared}/go ] && [ $i -lt 600 ]; do /bin/sleep 0.1; i=$((i+1)); done"
    body = (
        f'let a = mk "a" "/bin/touch {shared}/a; {wait}; echo > $out" {{}}; in '
        'mk "b" "/bin/cat ${a} > $out" {}\n'
    )
    proc = start_nix_build(hook_fleet, tmp_path, nix_file(tmp_path, body), "-j1", output=False)
    state = tmp_path / "state"
    try:
        wait_for((shared / "a").exists, 60, "a to build here")
        (pid,) = coordinator_pids(state)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: _another_coordinator(state, pid), 30, "a new coordinator")
        (shared / "go").touch()
        _, err = proc.communicate(timeout=120)
    finally:
        stop(proc)
        shutil.rmtree(shared)
    assert proc.returncode == 0, err
    assert "@nix" not in err
    said = [line for line in err.splitlines() if "the coordinator" in line]
    assert said == [_taken_over(pid)], err


def _hanging_builder(fleet: Fleet, tmp_path: Path) -> tuple[Path, Path]:
    """A machines file whose one builder, fast (the first choice) and with no features, is hf1
    reached through a proxy that touches ``<tmp_path>/connecting`` and says nothing (ssh's
    ConnectTimeout ends it); and the ssh config that says so."""
    proxy = tmp_path / "proxy.sh"
    proxy.write_text(f"/bin/touch {tmp_path}/connecting; exec /bin/sleep 30\n")
    text = fleet.ssh_config.read_text()
    block = text[text.index("Host hf1\n") :].split("\n\n")[0]
    hangs = block.replace("Host hf1\n", f"Host hangs\n  ProxyCommand /bin/sh {proxy}\n")
    config = tmp_path / "ssh_config"
    config.write_text(f"{text}\n\n{hangs}")
    line = fleet.machines_file.read_text().splitlines()[0].split()
    assert line[0].startswith("ssh://hf1?")
    line[0] = line[0].replace("hf1", "hangs", 1)
    line[3:6] = ["2", "8", "-"]
    machines = tmp_path / "machines"
    machines.write_text(" ".join(line) + "\n")
    return machines, config


# One derivation, asked with the settings; or b, asked of the hook that declined a (the
# builder lacks the feature it needs), once Nix built a itself.
ASKED = {
    "first": f'mk "b" "{SPEED} > $out" {{}}\n',
    "later": (
        'let a = mk "a" "echo > $out" { requiredSystemFeatures = [ "big-parallel" ]; }; in '
        f'mk "b" "/bin/cat ${{a}}; {SPEED} > $out" {{}}\n'
    ),
}


@pytest.mark.parametrize("which", list(ASKED))
def test_a_coordinator_killed_while_nix_waits_for_its_reply_is_taken_over(
    hook_fleet: Fleet, tmp_path: Path, which: str
) -> None:
    # The coordinator accepts b for the fast builder, but first opens a session there: Nix
    # waits for the reply meanwhile, and gets none. That failed the whole nix-build ("unexpected
    # EOF reading a line"), then cost b a local build; now a new coordinator decides b again:
    # it finds the builder silent (ssh's ConnectTimeout), and declines.
    machines, config = _hanging_builder(hook_fleet, tmp_path)
    argv = nix_build_argv(nix_file(tmp_path, ASKED[which]), f"@{machines}", "-j1")
    env = hook_env(hook_fleet, tmp_path, sshopts=f"-F {config}")
    pid, proc, out, err = _killed_while_connecting(tmp_path, argv, env)
    assert proc.returncode == 0, err
    assert Path(out.strip()).read_text().strip() == "local"
    assert "@nix" not in err
    said = [line for line in err.splitlines() if "the coordinator" in line]
    assert said == [_taken_over(pid)], err


def _killed_while_connecting(
    tmp_path: Path, argv: list[str], env: dict[str, str]
) -> tuple[int, subprocess.Popen[str], str, str]:
    """nix-build ``argv`` run until its coordinator opens a session to the hanging builder,
    the coordinator then SIGKILLed: its pid, the nix-build and what it printed."""
    proc = start(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for((tmp_path / "connecting").exists, 60, "the session to the builder to start")
        (pid,) = coordinator_pids(tmp_path / "state")
        os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        stop(proc)
    return pid, proc, out, err


def test_a_coordinator_that_cannot_take_over_is_said_as_it_ended(
    hook_fleet: Fleet, tmp_path: Path
) -> None:
    # The new coordinator is killed as it starts (its interpreter's sitecustomize, from its
    # second start on): the hook answers for the dead one, and says how the new one ended, as
    # it does when none starts at first; it said nothing of it.
    machines, config = _hanging_builder(hook_fleet, tmp_path)
    argv = nix_build_argv(nix_file(tmp_path, ASKED["first"]), f"@{machines}", "-j1")
    site, once = tmp_path / "site", tmp_path / "started-once"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, sys\nif 'offload.hook.coordinator' in sys.orig_argv:\n"
        f"    if os.path.exists({str(once)!r}):\n        os.kill(os.getpid(), 9)\n"
        f"    open({str(once)!r}, 'w').close()\n"
    )
    env = {**hook_env(hook_fleet, tmp_path, sshopts=f"-F {config}"), "PYTHONPATH": str(site)}
    pid, proc, out, err = _killed_while_connecting(tmp_path, argv, env)
    assert proc.returncode == 0, err  # postponed: Nix built it here
    assert Path(out.strip()).read_text().strip() == "local"
    said = [line for line in err.splitlines() if "the coordinator" in line]
    assert len(said) == 2, err
    assert said[0] == _taken_over(pid), err
    stopped = f"the coordinator stopped before the hook ended (pid {pid}, {ENDED['SIGKILL']})"
    new = said[1].split(f"{stopped}, and none took over (the coordinator, pid ", 1)
    assert len(new) == 2, err
    assert new[1].endswith(
        ", was killed by SIGKILL before it listened; it left no word in its log)"
    ), err


def test_a_coordinator_killed_while_nix_waits_with_no_local_slot_is_taken_over(
    hook_fleet: Fleet, tmp_path: Path
) -> None:
    # -j0: the hook's postpone had Nix find it gone and decline b, with no slot to build it:
    # "unable to start any build; remote machines may not have all required system features".
    # Now a new coordinator decides b again, and hf2 builds it once the fast builder is found
    # silent.
    machines, config = _hanging_builder(hook_fleet, tmp_path)
    hf2 = next(line for line in hook_fleet.machines_file.read_text().splitlines() if "hf2" in line)
    machines.write_text(machines.read_text() + hf2 + "\n")
    argv = nix_build_argv(nix_file(tmp_path, ASKED["first"]), f"@{machines}", "-j0")
    env = hook_env(hook_fleet, tmp_path, sshopts=f"-F {config}")
    proc = start(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for((tmp_path / "connecting").exists, 60, "the session to the builder to start")
        (pid,) = coordinator_pids(tmp_path / "state")
        os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        stop(proc)
    assert proc.returncode == 0, err
    speed = hook_fleet.member("hf2").spec.speed
    assert float(Path(out.strip()).read_text()) == speed, err
    said = [line for line in err.splitlines() if "the coordinator" in line]
    assert said == [_taken_over(pid)], err


@pytest.mark.parametrize("coordinator", ["running", "starting"])
def test_a_history_held_locked_stalls_no_build(
    hook_fleet: Fleet, tmp_path: Path, coordinator: str
) -> None:
    # Another process holds the history (offload build's run, a VACUUM): the coordinator
    # records in a thread of its own, so the builds end while the lock is held (in the event
    # loop each record waited out sqlite's 30 s), and the records are written once it goes.
    # A coordinator starting meanwhile opens its own connection for 0.5 s at most.
    file = nix_file(tmp_path, leaves(2))
    outputs(nix_build(hook_fleet, tmp_path, file, "-j0"))  # the history file is made
    state = tmp_path / "state"
    if coordinator == "starting":
        stop_coordinators(state)
    holder = sqlite3.connect(state / "history.sqlite", isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        file = nix_file(tmp_path, leaves(2), name="second.nix")
        proc = start_nix_build(hook_fleet, tmp_path, file, "-j0")
        try:
            out, err = proc.communicate(timeout=25)  # < 30 s: one record waited out in the loop
        finally:
            stop(proc)
        assert proc.returncode == 0, err
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    def recorded() -> bool:
        with History(state / "history.sqlite") as history:
            return len(history.builds(hook=True, limit=None)) == 4

    wait_for(recorded, 60, "the builds recorded once the lock went")
    assert len(out.split()) == 2


def test_a_damaged_history_is_said_and_builds_go_on(hook_fleet: Fleet, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "history.sqlite").write_bytes(os.urandom(5000))
    file = nix_file(tmp_path, leaves(2))
    done = nix_build(hook_fleet, tmp_path, file, "-j0")
    assert len(outputs(done)) == 2
    said = [line for line in done.stderr.splitlines() if "history not kept" in line]
    assert len(said) == 1, done.stderr  # once per nix-build
    assert "the history database is damaged" in said[0]
    assert "move the file away" in said[0]


@pytest.mark.parametrize("how", ["a file in its place", "a read-only mount"])
def test_a_state_directory_that_cannot_be_used_costs_no_build(
    hook_fleet: Fleet, tmp_path: Path, how: str
) -> None:
    # The hook keeps its state under TMPDIR instead, says so once per nix-build, and the
    # builds go to the builders as ever, through a coordinator there (it was an internal error
    # failing every one; a read-only one failed every derivation with -j0).
    # A short TMPDIR of the test's own: ssh's control sockets go under it too.
    tmp = Path(tempfile.mkdtemp(prefix="ohf", dir="/tmp"))
    state = tmp_path / "state-here"
    env = {**hook_env(hook_fleet, tmp_path), "OFFLOAD_STATE_DIR": str(state), "TMPDIR": str(tmp)}
    file = nix_file(tmp_path, leaves(2))
    argv = nix_build_argv(file, f"@{hook_fleet.machines_file}", "-j0")
    if how == "a file in its place":
        state.write_text("")
    else:
        state.mkdir()
        mount = f"mount --bind {state} {state} && mount -o remount,bind,ro {state}"
        argv = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                f"{mount} && exec {shlex.join(argv)}"]  # fmt: skip
    instead = tmp / f"offload-hook-{os.getuid()}" / "state"
    try:
        done = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=180, check=False
        )
    finally:
        stop_coordinators(instead)
        stop_masters(location(instead))
        shutil.rmtree(tmp)
    assert len(outputs(done)) == 2
    said = [line for line in done.stderr.splitlines() if f"kept in {instead} instead" in line]
    assert len(said) == 1, done.stderr
    assert "no coordinator" not in done.stderr
    assert "internal error" not in done.stderr
    assert state.is_dir() or state.read_text() == ""


def test_a_coordinator_killed_as_it_reads_a_try_still_has_it_decided(
    hook_fleet: Fleet, tmp_path: Path
) -> None:
    # As the between-derivations test, but the coordinator dies once it read b's try from its
    # pipe and before it told the hook process so (strace kills it as it sends). The new
    # coordinator, handed only the settings, waited for a try Nix had already sent, and Nix for
    # its reply: nix-build hung for ever.
    shared = Path(tempfile.mkdtemp(prefix="ohf", dir="/tmp"))
    shared.chmod(0o777)
    wait = f"i=0; while [ ! -e {shared}/go ] && [ $i -lt 600 ]; do /bin/sleep 0.1; i=$((i+1)); done"
    body = (
        f'let a = mk "a" "/bin/touch {shared}/a; {wait}; echo > $out" {{}}; in '
        'mk "b" "/bin/cat ${a} > $out" {}\n'
    )
    proc = start_nix_build(hook_fleet, tmp_path, nix_file(tmp_path, body), "-j1", output=False)
    state = tmp_path / "state"
    tracer = None
    try:
        wait_for((shared / "a").exists, 60, "a to build here")
        (pid,) = coordinator_pids(state)
        # Killed as it next sends on a socket (on that call's entry: nothing sent), telling the
        # hook process what it read of b's try: the first thing it reads and says meanwhile.
        argv = ["strace", "-qq", "-o", "/dev/null", "-p", str(pid)]
        tracer = start([*argv, "-e", "trace=read,sendto", "-e", "inject=sendto:signal=KILL"])
        wait_for(lambda: _traced(pid), 30, "strace to attach")
        (shared / "go").touch()
        _, err = proc.communicate(timeout=120)
    finally:
        stop(proc)
        if tracer is not None:
            stop(tracer)
        shutil.rmtree(shared)
    assert proc.returncode == 0, err
    said = [line for line in err.splitlines() if "the coordinator" in line]
    assert said in ([_taken_over(pid)], [_taken_over(pid, NOT_REAPED)]), err


def _traced(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(line for line in status.splitlines() if line.startswith("TracerPid:")) != (
        "TracerPid:\t0"
    )
