"""Where offload keeps its state: history, build logs, machine backoff, the local fleet.

``$OFFLOAD_STATE_DIR`` wins; otherwise ``$XDG_STATE_HOME/offload`` or ``~/.local/state/offload``.
The hook run by the nix-daemon has no home of a user: as root without ``$HOME`` (or with ``/``
or Nix's ``/homeless-shelter``) its state is ``/var/lib/offload``, which ``offload use`` also
writes when it may.
The directory is created with mode 0700: it holds build logs and fleet keys.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["SYSTEM_STATE_DIR", "ensure_state_dir", "hook_state_dir", "state_dir"]

# The hook's state when the nix-daemon runs it (as root, with the daemon's bare environment).
SYSTEM_STATE_DIR = Path("/var/lib/offload")


def state_dir(env: Mapping[str, str] | None = None, home: Path | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("OFFLOAD_STATE_DIR"):
        return Path(env["OFFLOAD_STATE_DIR"])
    base = (
        Path(env["XDG_STATE_HOME"])
        if env.get("XDG_STATE_HOME")
        else (home or Path.home()) / ".local" / "state"
    )
    return base / "offload"


def ensure_state_dir(env: Mapping[str, str] | None = None) -> Path:
    path = state_dir(env)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def hook_state_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("OFFLOAD_STATE_DIR") or env.get("XDG_STATE_HOME"):
        return state_dir(env)
    home = env.get("HOME", "")
    if os.geteuid() == 0 and home in {"", "/", "/homeless-shelter", "/var/empty"}:
        return SYSTEM_STATE_DIR
    return state_dir(env)
