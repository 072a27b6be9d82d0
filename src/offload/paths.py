"""Where offload keeps its state: history, build logs, machine backoff, the local fleet.

The rules are in ``offload.state_location`` (as strings, for the hook process); here as
``Path``s. The system directory, ``/var/lib/offload``, is the nix-daemon's hook's, which
``offload use`` also writes when it may. The directory is created with mode 0700: it holds
build logs and fleet keys.

A state directory that cannot be made (a read-only home, ``$XDG_STATE_HOME`` naming a file) is
``ConfigError`` naming it and the variable to change (``ensure_state_dir``), and so is a relative
``$OFFLOAD_STATE_DIR`` (``state_dir``: refused as Nix refuses a relative ``NIX_STATE_DIR``): the
commands that live on their state (``history``, ``report``, ``use``) stop there; those that
only read it (``history``, ``report``: ``read_state_dir``) make no directory. ``offload
build`` does not: its state is estimates and copies, so it builds with a temporary one instead,
said once, and keeps nothing of the run (``offload.cli.build``).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from offload.errors import ConfigError
from offload.state_location import (
    SYSTEM_STATE,
    RelativeStateDir,
    hook_state,
    user_state,
    uses_xdg_state,
)

__all__ = [
    "NIX_DAEMON_SOCKET",
    "SYSTEM_STATE_DIR",
    "daemon_here",
    "ensure_state_dir",
    "hook_state_dir",
    "read_state_dir",
    "state_dir",
    "state_hint",
    "unusable_state",
]

SYSTEM_STATE_DIR = Path(SYSTEM_STATE)
# Where a nix-daemon listens unless NIX_DAEMON_SOCKET_PATH says otherwise.
NIX_DAEMON_SOCKET = "/nix/var/nix/daemon-socket/socket"


def daemon_here(env: Mapping[str, str] | None = None) -> bool:
    """Whether a nix-daemon listens on this host (its socket is there): the builds Nix starts
    for users then go through it, and its offload-hook runs as root."""
    env = os.environ if env is None else env
    try:
        mode = Path(env.get("NIX_DAEMON_SOCKET_PATH") or NIX_DAEMON_SOCKET).stat().st_mode
    except OSError:
        return False
    return stat.S_ISSOCK(mode)


def state_dir(env: Mapping[str, str] | None = None, home: Path | None = None) -> Path:
    """The user's state directory; ``ConfigError`` for a relative ``$OFFLOAD_STATE_DIR``."""
    try:
        return Path(user_state(env, None if home is None else str(home)))
    except RelativeStateDir as exc:
        raise ConfigError(str(exc), hint=exc.HINT) from None


def ensure_state_dir(env: Mapping[str, str] | None = None) -> Path:
    """``state_dir``, made (0700) if it is missing; ``ConfigError`` if it cannot be."""
    path = state_dir(env)
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise unusable_state(path, exc, env) from exc
    return path


def read_state_dir(env: Mapping[str, str] | None = None) -> Path:
    """``state_dir`` for a command that only reads it: not made when it is missing (a reader
    leaves nothing behind), but ``ConfigError`` where ``ensure_state_dir`` could not make it
    (a file in its path, a parent this user may not write), so that is what is said."""
    path = state_dir(env)
    there = path
    while not os.path.lexists(there) and there != there.parent:
        there = there.parent
    if there != path or not path.is_dir():
        failed = 0
        if not there.is_dir():
            failed = errno.ENOTDIR
        elif there != path and not os.access(there, os.W_OK | os.X_OK):
            failed = errno.EACCES
        if failed:
            raise unusable_state(path, OSError(failed, os.strerror(failed)), env)
    return path


def unusable_state(
    path: Path, exc: OSError, env: Mapping[str, str] | None = None, *, doing: str = "make"
) -> ConfigError:
    """The error for the state directory ``path`` that could not be made (or written:
    ``doing``) for ``exc``; its hint names the setting that put it there."""
    blocker = next((p for p in (path, *path.parents) if _not_directory(p)), None)
    why = f"{blocker} is not a directory" if blocker is not None else exc.strerror or str(exc)
    return ConfigError(f"{path}: cannot {doing} the state directory: {why}", hint=state_hint(env))


def state_hint(env: Mapping[str, str] | None = None) -> str:
    """How to put the user's state directory elsewhere, for what chose where it is now."""
    env = os.environ if env is None else env
    if env.get("OFFLOAD_STATE_DIR"):
        return "OFFLOAD_STATE_DIR names it: point it at a directory you may write"
    if uses_xdg_state(env):
        return (
            "it is $XDG_STATE_HOME/offload: point XDG_STATE_HOME (or OFFLOAD_STATE_DIR)"
            " at a directory you may write"
        )
    return "it is under your home: set OFFLOAD_STATE_DIR to a directory you may write"


def _not_directory(path: Path) -> bool:
    try:
        path.lstat()
    except OSError:  # missing, or in a directory this user may not search: not the blocker
        return False
    return not path.is_dir()


def hook_state_dir(env: Mapping[str, str] | None = None) -> Path:
    try:
        return Path(hook_state(env))
    except RelativeStateDir as exc:
        raise ConfigError(str(exc), hint=exc.HINT) from None
