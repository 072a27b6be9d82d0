"""Where offload keeps its state: history, build logs, machine backoff, the local fleet.

``$OFFLOAD_STATE_DIR`` wins; otherwise ``$XDG_STATE_HOME/offload`` or ``~/.local/state/offload``.
The directory is created with mode 0700: it holds build logs and fleet keys.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["ensure_state_dir", "state_dir"]


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
