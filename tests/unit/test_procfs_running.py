"""procfs.running: a process that has exited is gone, even while its /proc entry waits to be
reaped (a daemon's parent is init, which may take its time); a live one is running, whatever
bytes it is named by. procfs.exiting: only a process that has begun to exit is, and
procfs.parent_pid reads a process's parent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from offload.procfs import exiting, parent_pid, running


def test_a_live_process_is_running() -> None:
    assert running(os.getpid())


def test_a_zombie_has_exited_though_its_proc_entry_stays() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        # Wait for its exit without reaping it: it stays a zombie, /proc entry and all.
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        assert Path(f"/proc/{child.pid}").exists()
        assert not running(child.pid)
    finally:
        child.wait()


def test_only_a_process_that_began_to_exit_is_exiting() -> None:
    assert not exiting(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        assert exiting(child.pid)  # a zombie
    finally:
        child.wait()
    assert not exiting(child.pid)  # no process at all


def test_a_process_parent_is_read_and_none_for_no_process() -> None:
    assert parent_pid(os.getpid()) == os.getppid()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert parent_pid(child.pid) is None


def test_a_reaped_process_is_not_running() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not running(child.pid)


def test_a_process_named_in_bytes_not_utf_8_is_running() -> None:
    # A process's name (comm, in /proc/PID/stat) is any bytes it chose: prctl(PR_SET_NAME),
    # or its executable's file name cut to 15 bytes, mid-character. Decoded strictly, such a
    # live process was taken for one that had ended.
    rename = "import ctypes; ctypes.CDLL(None).prctl(15, b'caf\\xe9', 0, 0, 0)"
    argv = [sys.executable, "-c", f"{rename}; print(flush=True); input()"]
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE) as child:
        assert child.stdout is not None
        assert child.stdout.readline() == b"\n"  # renamed
        assert Path(f"/proc/{child.pid}/comm").read_bytes() == b"caf\xe9\n"
        assert running(child.pid)
        child.communicate(b"\n")
