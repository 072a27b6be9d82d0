"""procfs.running: a process that has exited is gone, even while its /proc entry waits to be
reaped (a daemon's parent is init, which may take its time)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from offload.procfs import running


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


def test_a_reaped_process_is_not_running() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not running(child.pid)
