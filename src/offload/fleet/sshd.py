"""Starting one member's sshd and proving it answers.

The sshd runs detached in a mount namespace of its own (``spec.member_argv``) on a free port of
127.0.0.1; it is ready once it listens there, is in its own namespace, and answers over ssh with
the pinned host key, its own ``/etc/nix`` and a working Nix.
"""

from __future__ import annotations

import os
import shlex
import socket
import time
from collections.abc import Callable
from pathlib import Path

from offload.errors import FleetError, OffloadError
from offload.fleet.files import login_home, prepare_member, write_private
from offload.fleet.namespace import mnt_ns, stop_member
from offload.fleet.records import MemberRecord
from offload.fleet.spec import (
    MEMBER_SPEED_FILE,
    MemberSpec,
    member_argv,
    speed_text,
    sshd_config,
)
from offload.process import run, start_detached
from offload.procfs import is_ours, proc_stat
from offload.threads import interrupts_held

__all__ = ["check_ssh", "start_member"]

_READY_TIMEOUT = 10.0
# ssh's exit status for its own errors (anything else is the remote command's).
_SSH_FAILED = 255


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 10) -> str:
    try:
        tail = path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return "(no log)"
    return " | ".join(tail) or "(empty log)"


def start_member(
    fleet_dir: Path, spec: MemberSpec, started: Callable[[MemberRecord], None] = lambda _: None
) -> MemberRecord:
    """Start member ``spec`` and wait until it listens; ``started`` learns each sshd started
    (with no namespace yet) before a Ctrl-C that came meanwhile is raised, so that the caller
    can stop it whenever it is interrupted."""
    root = fleet_dir / spec.name
    prepare_member(fleet_dir, root, spec)
    last_error: FleetError | None = None
    # A free port can be taken between our probe and sshd's bind: try a few.
    for _ in range(3):
        port = _free_port()
        config = root / "sshd_config"
        write_private(config, sshd_config(root, port, spec))
        log = root / "sshd.log"
        write_private(log, "")  # under umask 000 it was 0666
        argv = member_argv(
            root, config, spec.proc_overrides, home=login_home(fleet_dir), daemon=spec.untrusted
        )
        with interrupts_held():
            pid = start_detached(argv, log=log)
            stat = proc_stat(pid)
            record = MemberRecord(spec, port, pid, stat[1] if stat else 0, "")
            started(record)
        try:
            _wait_listening(record, log)
        except FleetError as exc:
            stop_member(fleet_dir, record)
            last_error = exc
            if "Address already in use" in log_tail(log):
                continue
            raise
        except BaseException:
            stop_member(fleet_dir, record)
            raise
        ns = mnt_ns(pid)
        if ns is None or ns == mnt_ns(os.getpid()):
            stop_member(fleet_dir, record)
            raise FleetError(f"fleet member {spec.name} is not in its own mount namespace")
        return MemberRecord(spec, port, pid, record.start_time, ns)
    assert last_error is not None
    raise last_error


def _wait_listening(record: MemberRecord, log: Path) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT
    name = record.spec.name
    while True:
        if not is_ours(record.pid, record.start_time):
            raise FleetError(
                f"sshd of fleet member {name} exited: {log_tail(log)}",
                hint=f"see {log}",
            )
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            try:
                sock.connect(("127.0.0.1", record.port))
            except OSError:
                pass
            else:
                return
        if time.monotonic() > deadline:
            raise FleetError(
                f"sshd of fleet member {name} does not listen on port {record.port}: "
                f"{log_tail(log)}",
                hint=f"see {log}",
            )
        time.sleep(0.02)


def check_ssh(fleet_dir: Path, record: MemberRecord) -> None:
    """Prove auth and the pinned host key work, the member sees its own /etc/nix, and has Nix.

    A hardened member (``spec.forced``) runs its forced command whatever is asked: there only
    the login is proved (ssh exits 255 for its own failures), with stdin at EOF so the forced
    program ends at once.
    """
    name = record.spec.name
    remote = f"cat {MEMBER_SPEED_FILE} && nix-store --version"
    argv = ["ssh", "-F", str(fleet_dir / "ssh_config"), name, "--", remote]
    try:
        done = run(argv, check=False, timeout=_READY_TIMEOUT)
    except OffloadError as exc:
        done_err = exc.message
    else:
        lines = done.stdout.splitlines()
        if record.spec.forced is not None and done.returncode != _SSH_FAILED:
            return
        if (
            done.returncode == 0
            and lines[:1] == [speed_text(record.spec.speed)]
            and "Nix" in done.stdout
        ):
            return
        done_err = done.stderr.strip() or done.stdout.strip() or f"exit {done.returncode}"
    log = fleet_dir / name / "sshd.log"
    raise FleetError(
        f"fleet member {name} does not answer over ssh ({done_err}); sshd log: {log_tail(log)}",
        hint=f"try `{shlex.join(argv)}`",
    )
