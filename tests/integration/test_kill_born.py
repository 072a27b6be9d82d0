"""The kill script (``wrapper.kill_script``) on real processes: a serve process's start, told by
the wrapper's start line, guards its kill (it stops the pid only while it is still the process
that started then: pids are used again), and what the serve process started and that outlives
SIGTERM gets SIGKILL after the grace, in its group or in a session of its own, with Debian's
awk and with BWK's (macOS's); a zombie that init has not reaped yet is not waited for, and a
process whose main thread alone is gone is not taken for one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload.procfs import parse_proc_stat, proc_stat, running
from offload.transport.wrapper import kill_script, parse_born, parse_start_line, serve_command


def _born(pid: int) -> str:
    """``pid``'s start time, as /proc/PID/stat says it (what the start line tells)."""
    stat = proc_stat(pid)
    assert stat is not None
    return str(stat[1])


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    # A session of its own, as a serve process on a builder is: the kill script signals the
    # process groups below the pid, and this test's own must not be one of them.
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("shell", ["dash", "bash"])
def test_the_start_line_tells_when_the_serve_process_started(shell: str) -> None:
    # The "serve program" prints its own start time: exec keeps the wrapper's pid and start.
    argv = serve_command(program=["sh", "-c", "exec cat /proc/$$/stat"])
    done = subprocess.run(
        [shell, *argv[1:]],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30, check=True,
    )  # fmt: skip
    line, stat = done.stdout.splitlines()[:2]
    start = parse_start_line(line)
    assert start is not None
    assert parse_born(line) == str(parse_proc_stat(stat)[1])
    assert stat.startswith(f"{start[0]} (")  # the same process


def test_a_pid_that_started_at_another_time_is_left_alone(
    sleeper: subprocess.Popen[bytes],
) -> None:
    other = str(int(_born(sleeper.pid)) + 1)  # what the pid's earlier holder started at
    subprocess.run(kill_script(sleeper.pid, 1, other), timeout=30, check=True)
    assert sleeper.poll() is None
    subprocess.run(kill_script(sleeper.pid, 1, _born(sleeper.pid)), timeout=30, check=True)
    assert sleeper.wait(timeout=10) == -15


def test_without_a_start_the_pid_is_stopped(sleeper: subprocess.Popen[bytes]) -> None:
    # A builder without /proc (macOS) tells none: the kill goes by the pid, as before.
    subprocess.run(kill_script(sleeper.pid, 1), timeout=30, check=True)
    assert sleeper.wait(timeout=10) == -15


def _children(pid: int) -> list[int]:
    """``pid``'s children, once it has any (it starts them at once)."""
    deadline = time.monotonic() + 10
    while not (found := Path(f"/proc/{pid}/task/{pid}/children").read_text().split()):
        assert time.monotonic() < deadline, "no child started"
    return [int(child) for child in found]


def _ignoring_sigterm(pid: int) -> None:
    """Once ``pid`` ignores SIGTERM (its trap set, so a setsid before it done too): the kill
    must find it where it will be, not where it was forked (under load the kill ran first)."""
    deadline = time.monotonic() + 10
    while True:
        status = Path(f"/proc/{pid}/status").read_text()
        ignored = int(
            next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:")), 16
        )
        if ignored & (1 << (signal.SIGTERM - 1)):
            return
        assert time.monotonic() < deadline, "the child never ignored SIGTERM"


@pytest.fixture(params=["awk", "original-awk"])
def awk_path(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A PATH whose ``awk`` is this host's (mawk on Debian) or BWK's "one true awk", macOS's:
    the kill script runs on builders of both kinds."""
    bin_dir = tmp_path / "awk-bin"
    bin_dir.mkdir()
    found = shutil.which(request.param)
    assert found is not None, f"{request.param} is missing: make setup installs it"
    (bin_dir / "awk").symlink_to(found)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


@pytest.mark.parametrize(
    "child",
    [
        "(trap '' TERM; exec sleep 60) & wait",  # in the serve process's group
        "setsid sh -c 'trap \"\" TERM; exec sleep 60' & wait",  # in a session of its own
    ],
    ids=["same-group", "own-session"],
)
def test_what_outlives_sigterm_gets_sigkill_after_the_grace(child: str, awk_path: str) -> None:
    serve = subprocess.Popen(["sh", "-c", child], start_new_session=True)
    # Reaped as soon as it ends, as sshd reaps it: its pid then names only its group.
    reaper = threading.Thread(target=serve.wait)
    reaper.start()
    (stubborn,) = _children(serve.pid)
    _ignoring_sigterm(stubborn)
    try:
        subprocess.run(
            kill_script(serve.pid, 1, _born(serve.pid)),
            env={**os.environ, "PATH": awk_path}, timeout=30, check=True,
        )  # fmt: skip
        # The script ends once SIGKILL is sent; the kernel ends the process as it is next
        # scheduled, which under load (CI) came after the first look.
        deadline = time.monotonic() + 10
        while running(stubborn):
            assert time.monotonic() < deadline, "still running 10 s after SIGKILL"
            time.sleep(0.01)
    finally:
        subprocess.run(["kill", "-KILL", str(stubborn)], check=False, capture_output=True)
        reaper.join(timeout=10)


# Run apart, as the reaper of what is orphaned below it (PR_SET_CHILD_SUBREAPER), which it does
# not reap: as a container's init that reaps once a second, or later. The serve process
# (`exec sleep`) never reaps its child in a session of its own, which SIGTERM makes a zombie.
_ZOMBIE_RUN = """
import ctypes, json, os, subprocess, sys, threading, time
from offload.transport.wrapper import kill_script

def stat(pid):  # (name, [state, ppid, pgrp, session, ...]), None once gone
    try:
        text = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    return text[text.index("(") + 1 : text.rindex(")")], text.rsplit(") ", 1)[1].split()

assert ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0
serve = subprocess.Popen(["sh", "-c", "setsid sleep 60 & exec sleep 61"], start_new_session=True)
threading.Thread(target=serve.wait, daemon=True).start()  # reaped at once, as sshd reaps it
deadline = time.monotonic() + 10
while True:  # until the serve process is sleep and its child sleeps in a session of its own
    kids = open(f"/proc/{serve.pid}/task/{serve.pid}/children").read().split()
    top, kid = stat(serve.pid), (stat(int(kids[0])) if kids else None)
    if top and top[0] == "sleep" and kid and kid[0] == "sleep" and kid[1][3] == kids[0]:
        break
    assert time.monotonic() < deadline, "the serve process never started its child"
child = int(kids[0])
started = time.monotonic()
subprocess.run(kill_script(serve.pid, int(sys.argv[1])), check=True, timeout=120)
took = time.monotonic() - started
state = stat(child)[1][0]
os.waitpid(child, 0)
print(json.dumps({"took": took, "state": state}))
"""


def test_a_zombie_left_for_a_slow_init_is_not_waited_for() -> None:
    grace = 20
    done = subprocess.run(
        [sys.executable, "-c", _ZOMBIE_RUN, str(grace)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    found = json.loads(done.stdout)
    assert found["state"] == "Z"  # it was left a zombie, as the slow init leaves it
    assert found["took"] < grace / 2  # the kill saw it dead and did not wait out the grace


# A process whose main thread is gone while another runs on: /proc says "Z", ps "Zl".
_HALF_GONE = """
import ctypes, signal, threading, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
threading.Thread(target=time.sleep, args=(600,)).start()
ctypes.CDLL(None).pthread_exit(None)
"""


def test_a_process_whose_main_thread_is_gone_still_gets_sigkill() -> None:
    serve = subprocess.Popen([sys.executable, "-c", _HALF_GONE], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while _state(serve.pid) != "Z":
            assert time.monotonic() < deadline, "the main thread never exited"
        subprocess.run(kill_script(serve.pid, 1, _born(serve.pid)), timeout=30, check=True)
        assert serve.wait(timeout=10) == -signal.SIGKILL  # not taken for a zombie, and killed
    finally:
        serve.kill()
        serve.wait()


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[0]
