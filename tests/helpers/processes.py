"""Processes a test starts: each in a session (and so a process group) of its own.

Stopping one kills its whole group, so whatever it started in turn (ssh, nix-store, a builder's
shell) goes with it, even when the leader has already exited.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from typing import Any


def start(argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen(argv, **kwargs)`` as the leader of a new session and process group."""
    return subprocess.Popen(argv, start_new_session=True, **kwargs)


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL every process in ``proc``'s group (``proc`` was started by ``start``)."""
    # The group outlives its leader while any member lives; once none does, there is no group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def stop(proc: subprocess.Popen[Any]) -> None:
    """Kill ``proc``'s process group, reap ``proc``, and drain and close its pipes."""
    kill_group(proc)
    proc.communicate()
