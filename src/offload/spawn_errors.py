"""What a program that could not be started is said as: ``not_started`` makes the
``NotStarted`` (a ``TransportError``: why, and its fix) that ``offload.process`` raises for
every spawn's ``OSError``, so that each way of starting a process says it in one wording.
Every process offload starts runs on this host: its ``peer`` is ``LOCAL``, so that no builder
is blamed for an ssh missing here, or a process limit reached (EAGAIN, EMFILE)."""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path

from offload.errors import NotStarted
from offload.names import LOCAL

__all__ = ["not_started"]

_INSTALL_HINTS = {
    "nix-store": "install Nix (Debian: apt-get install nix-bin), or run `make setup`",
    "nix-instantiate": "install Nix (Debian: apt-get install nix-bin), or run `make setup`",
    "nix": "install Nix (Debian: apt-get install nix-bin), or run `make setup`",
    "ssh": "install OpenSSH (Debian: apt-get install openssh-client)",
    "ssh-keygen": "install OpenSSH (Debian: apt-get install openssh-client)",
    "ssh-keyscan": "install OpenSSH (Debian: apt-get install openssh-client)",
    "sshd": "install the OpenSSH server (Debian: apt-get install openssh-server)",
    "unshare": "install util-linux",
}


def not_started(argv: Sequence[str], exc: OSError, cwd: Path | None = None) -> NotStarted:
    """Why ``argv`` could not be started (``exc``, from the spawn, in ``cwd`` if given), with
    the fix for that cause (each had the install hint: an argument list too long, a program
    that is no program, a cwd that is gone); this host's fault (``peer``)."""
    error = _said(argv, exc, cwd)
    error.peer = LOCAL
    return error


def _said(argv: Sequence[str], exc: OSError, cwd: Path | None) -> NotStarted:
    program = Path(argv[0]).name
    said = f"cannot run {argv[0]}: {exc.strerror}"
    if cwd is not None and exc.filename in (cwd, str(cwd)):  # its chdir failed, not its exec
        return NotStarted(
            f"cannot run {argv[0]} in {cwd}: {exc.strerror}",
            hint="that directory must exist and be searchable by this user",
        )
    if exc.errno == errno.E2BIG:
        size = sum(len(os.fsencode(a)) + 1 for a in argv)
        longest = max(len(os.fsencode(a)) for a in argv)
        return NotStarted(
            f"{said} ({size:,} bytes in {len(argv)} arguments, the longest {longest:,})",
            hint="one argument may be 128 KiB at most, and all of them with the environment"
            " `getconf ARG_MAX` bytes: give less at once (a long -E expression: in a file),"
            " or unset large environment variables",
        )
    if isinstance(exc, FileNotFoundError):  # One with no hint of its own still gets one.
        hint = _INSTALL_HINTS.get(program, f"install {program}, or put it on PATH")
    elif isinstance(exc, PermissionError):
        # It is there, and this user may not run it: installing it again changes nothing.
        hint = f"make {program} executable for this user (chmod +x), or put another first on PATH"
    elif exc.errno == errno.ENOEXEC:  # a script without its #! line, another machine's binary
        hint = f"the {program} first on PATH is no program this machine runs: reinstall it"
    else:  # out of processes or memory (EAGAIN, ENOMEM), ...
        hint = f"the system would not start it: check {program} and this user's limits (ulimit -a)"
    return NotStarted(said, hint=hint)
