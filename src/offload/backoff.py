"""Builder backoff remembered across runs: ``<state>/backoff.json``.

A builder that failed is backed off (policy: 60 s x 3^(n-1)); without memory, every new run
would pay the connect timeout again for each dead builder (nix#13513). Times are wall-clock
seconds so they survive the process; a successful build resets a machine's entry, and
``offload machines --reset NAME`` does it by hand (``clear_backoff``). An entry may say why
(``reason``: the last failure, one line), for people to read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from offload.state_json import read_state_json, write_state_json

__all__ = ["Health", "clear_backoff", "load_backoff", "load_backoffs", "save_backoff"]


@dataclass(frozen=True)
class Health:
    failures: int
    until: float  # wall clock; the machine may be tried again from then on
    reason: str | None = None


def load_backoff(path: Path, now: float) -> dict[str, Health]:
    """Entries still in force at ``now``; a missing or unreadable file means none."""
    data = read_state_json(path)
    if not isinstance(data, dict):
        return {}
    result = {}
    for name, entry in data.items():
        try:
            health = Health(int(entry["failures"]), float(entry["until"]))
        except (KeyError, TypeError, ValueError, OverflowError):  # int(Infinity), float(10**400)
            continue
        reason = entry.get("reason")
        if isinstance(reason, str) and reason:
            health = Health(health.failures, health.until, reason)
        if health.failures > 0 and health.until > now:
            result[str(name)] = health
    return result


def save_backoff(path: Path, changes: Mapping[str, Health | None], now: float) -> None:
    """Merge ``changes`` (None: the machine is healthy) into the file, atomically, mode 0600."""
    current = load_backoff(path, now)
    for name, health in changes.items():
        if health is None:
            current.pop(name, None)
        else:
            current[name] = health
    data: dict[str, dict[str, object]] = {}
    for name, health in sorted(current.items()):
        data[name] = {"failures": health.failures, "until": health.until}
        if health.reason is not None:
            data[name]["reason"] = health.reason
    write_state_json(path, data)


def load_backoffs(paths: Sequence[Path], now: float) -> dict[str, Health]:
    """Entries in force in any of ``paths``; a machine backed off in several shows the latest."""
    merged: dict[str, Health] = {}
    for path in paths:
        for name, health in load_backoff(path, now).items():
            if name not in merged or health.until > merged[name].until:
                merged[name] = health
    return merged


def clear_backoff(path: Path, names: Sequence[str], now: float) -> list[str]:
    """Forget the backoff of ``names`` in ``path``; returns those that had one in force."""
    current = load_backoff(path, now)
    found = [name for name in names if name in current]
    if found:
        save_backoff(path, dict.fromkeys(found), now)
    return found
