"""Where offload keeps its state: history, build logs, machine backoff, the local fleet.

The rules are in ``offload.state_location`` (as strings, for the hook process); here as
``Path``s. The system directory, ``/var/lib/offload``, is the nix-daemon's hook's, which
``offload use`` also writes when it may. The directory is created with mode 0700: it holds
build logs and fleet keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from offload.state_location import SYSTEM_STATE, hook_state, user_state

__all__ = ["SYSTEM_STATE_DIR", "ensure_state_dir", "hook_state_dir", "state_dir"]

SYSTEM_STATE_DIR = Path(SYSTEM_STATE)


def state_dir(env: Mapping[str, str] | None = None, home: Path | None = None) -> Path:
    return Path(user_state(env, None if home is None else str(home)))


def ensure_state_dir(env: Mapping[str, str] | None = None) -> Path:
    path = state_dir(env)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def hook_state_dir(env: Mapping[str, str] | None = None) -> Path:
    return Path(hook_state(env))
