"""What a program that could not be started is said as: ``not_started`` makes the
``TransportError`` (why, and its fix) that ``offload.process`` raises for every spawn's
``OSError``, so that each way of starting a process says it in one wording."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from offload.errors import TransportError

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


def not_started(argv: Sequence[str], exc: OSError) -> TransportError:
    """Why ``argv`` could not be started (``exc``, from the spawn), with its fix."""
    program = Path(argv[0]).name
    if isinstance(exc, PermissionError):
        # It is there, and this user may not run it: installing it again changes nothing.
        hint = f"make {program} executable for this user (chmod +x), or put another first on PATH"
    else:  # One with no install hint of its own still gets one: none said nothing.
        hint = _INSTALL_HINTS.get(program, f"install {program}, or put it on PATH")
    return TransportError(f"cannot run {argv[0]}: {exc.strerror}", hint=hint)
