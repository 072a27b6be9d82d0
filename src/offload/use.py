"""The builder choice in force: ``offload use NAME,...|@TAG [--for DURATION]``.

Builds started by Nix itself (``nixos-rebuild``, ``nix build``, the nix-daemon) reach offload
only through its hook, whose environment and arguments the user does not control. So the
choice lives in a file the hook reads at each derivation: ``<state>/use.json``, holding the
``--on`` tokens offload build takes (names, ``@tags``, ``local``), when it was set and until
when (none: until cleared). A choice past its time is not in force. The file is written
atomically, mode 0644 (it holds only machine names), in the state directory (mode 0700: the
system one, ``/var/lib/offload``, is written and read by root alone).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from offload.errors import ConfigError
from offload.state_json import read_state_json

__all__ = ["USE_FILE", "Choice", "clear_choice", "parse_duration", "read_choice", "write_choice"]

USE_FILE = "use.json"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"([0-9]{1,6})([smhd])")


@dataclass(frozen=True)
class Choice:
    machines: tuple[str, ...]  # --on tokens
    since: float
    until: float | None = None

    def in_force(self, now: float) -> bool:
        return self.until is None or now < self.until


def parse_duration(text: str, flag: str = "--for") -> float:
    """``90s``, ``30m``, ``2h``, ``1d`` or sums of them such as ``1h30m`` (``flag``: what
    gave it, for the error)."""
    pos, total = 0, 0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        total += int(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text or total <= 0:
        raise ConfigError(
            f"{flag} {text!r}: not a duration", hint="write it as 90s, 30m, 2h or 1h30m"
        )
    return float(total)


def read_choice(state: Path, now: float) -> Choice | None:
    """The choice in force, or None (none set, expired, or the file unreadable)."""
    data = read_state_json(state / USE_FILE)
    if not isinstance(data, dict):
        return None
    try:
        machines = tuple(str(m) for m in data["machines"])
        since = float(data["since"])
        until = None if data.get("until") is None else float(data["until"])
    except (ValueError, KeyError, TypeError, OverflowError):  # OverflowError: float(10**400)
        return None
    choice = Choice(machines, since, until)
    return choice if machines and choice.in_force(now) else None


def write_choice(state: Path, choice: Choice) -> Path:
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = {"machines": list(choice.machines), "since": choice.since, "until": choice.until}
    fd, tmp = tempfile.mkstemp(dir=state, prefix=".use-")
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(data, out)
        Path(tmp).chmod(0o644)
        Path(tmp).replace(state / USE_FILE)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        raise
    return state / USE_FILE


def clear_choice(state: Path) -> bool:
    """Whether there was a choice file to remove (none: also when ``state`` cannot be a
    directory, a file in its way)."""
    try:
        (state / USE_FILE).unlink()
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True
