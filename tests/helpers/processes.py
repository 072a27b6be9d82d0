"""Processes a test starts: each in a session (and so a process group) of its own.

Stopping one kills its whole group, so whatever it started in turn (ssh, nix-store, a builder's
shell) goes with it, even when the leader has already exited. ``children`` reads ``/proc`` for
the processes those start in sessions of their own (ssh), which a group kill misses
(``offload.procfs.running`` tells whether one is still there).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def start(argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen(argv, **kwargs)`` as the leader of a new session and process group."""
    return subprocess.Popen(argv, start_new_session=True, **kwargs)


def read_until(proc: subprocess.Popen[str], text: str, seen: list[str]) -> str:
    """Read ``proc``'s stderr up to the line holding ``text`` (returned); each line read is
    added to ``seen``, for the failure message and the caller's later checks."""
    assert proc.stderr is not None
    while text not in (line := proc.stderr.readline()):
        assert line, f"the process ended before saying {text!r}:\n{''.join(seen)}"
        seen.append(line)
    seen.append(line)
    return line


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL every process in ``proc``'s group (``proc`` was started by ``start``)."""
    # The group outlives its leader while any member lives; once none does, there is no group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def stop(proc: subprocess.Popen[Any]) -> None:
    """Kill ``proc``'s process group, reap ``proc``, and drain and close its pipes."""
    kill_group(proc)
    if any(pipe is not None and pipe.closed for pipe in (proc.stdout, proc.stderr)):
        proc.wait()  # a failed wait for it read them already: its message is the test's
        return
    proc.communicate()


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live children of ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] not in "ZX" and int(fields[1]) == pid:
            found.append((int(entry.name), cmdline))
    return found
