"""A member's processes, found and stopped without trusting a pid alone.

A recorded pid is ours only while it still has the recorded start time (never a recycled pid).
Stopping a member stops its sshd, then every process left in its mount namespace
(per-connection sshd children run in their own sessions, and ``nix-store --serve`` under them).
Nothing is unmounted: a namespace and its bind mounts disappear with its last process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from offload.errors import FleetError
from offload.fleet.records import MemberRecord
from offload.numerals import is_decimal
from offload.process import stop_process_group
from offload.procfs import exiting, parent_pid, proc_stat

__all__ = ["mnt_ns", "stop_member"]

_STOP_TIMEOUT = 5.0


def mnt_ns(pid: int) -> str | None:
    try:
        return str(Path(f"/proc/{pid}/ns/mnt").readlink())
    except OSError:
        return None


def _namespace_pids(record: MemberRecord, root: Path) -> list[int]:
    """Live processes that see the member's own directory at /nix, other than this one.

    That is the member's sshd and everything below it, including nix-store, which runs in a
    mount namespace of its own (Nix 2.8 unshares one to remount the store) and so does not
    share the member's namespace id. No other process can see that directory at /nix.
    Two kinds of process have a root that cannot be read:
    - one exiting lets go of its root a moment before its namespace: it counts while it is
      still in the member's namespace id, until it is gone;
    - a live one chrooted elsewhere (an sshd's unprivileged child, in an empty directory)
      counts when its parent does.
    Never a live one by the namespace id alone: an id is used again as soon as it is free (the
    member's is, once its last process has gone), and a process there is a stranger's, maybe
    another fleet's member's, which a stop killed.
    """
    if not record.mnt_ns or record.mnt_ns == mnt_ns(os.getpid()):
        return []
    try:
        want = (root / "nix").stat()
    except OSError:
        return []
    pids: list[int] = []
    chrooted: dict[int, int | None] = {}
    for entry in Path("/proc").iterdir():
        if not is_decimal(entry.name) or (pid := int(entry.name)) == os.getpid():
            continue
        try:
            seen = (entry / "root" / "nix").stat()
        except OSError:
            if not exiting(pid):
                chrooted[pid] = parent_pid(pid)
            elif mnt_ns(pid) == record.mnt_ns:
                pids.append(pid)
            continue
        if (seen.st_dev, seen.st_ino) == (want.st_dev, want.st_ino):
            pids.append(pid)
    members = set(pids)
    return pids + [pid for pid, parent in chrooted.items() if parent in members]


def stop_member(fleet_dir: Path, record: MemberRecord) -> None:
    root = fleet_dir / record.spec.name
    stat = proc_stat(record.pid)
    # A zombie with our start time is our own dead child: stopping it reaps it.
    if stat is not None and stat[1] == record.start_time:
        stop_process_group(record.pid, grace=_STOP_TIMEOUT / 2)
    deadline = time.monotonic() + _STOP_TIMEOUT
    sig = signal.SIGTERM
    while pids := _namespace_pids(record, root):
        if time.monotonic() > deadline:
            raise FleetError(
                f"processes {', '.join(map(str, pids))} of fleet member {record.spec.name} "
                "did not stop"
            )
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        # Give SIGTERM a moment, then insist.
        time.sleep(0.05)
        sig = signal.SIGKILL
