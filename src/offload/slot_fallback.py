"""Builders whose slots are counted on this host only, as learned: ``<state>/slot-fallback.json``.

A build session asks the builder for a slot lock of its own (``offload.transport.wrapper``); a
builder that cannot give one (its key runs only the serve program or ``nix-daemon``, it has no
flock(1), no directory for the locks could be made) has its slots counted on this host only.
``offload build`` and ``offload-hook`` learn which from their first build session there and
write it here, so ``offload status``, which connects to nothing, can say so: an entry per
builder that fell back (why, and when that was learned); a builder found counting its slots
itself again loses its entry. The file is rewritten whole (atomically, mode 0600, in the
private state directory) and only when what it says changes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from offload.state_json import latest_entries, merging, write_state_json

__all__ = ["FALLBACK_FILE", "Fallback", "load_fallbacks", "record_fallbacks"]

FALLBACK_FILE = "slot-fallback.json"


@dataclass(frozen=True)
class Fallback:
    reason: str  # why no slot lock can be taken on the builder, for people to read
    learned: float  # wall clock


def load_fallbacks(paths: Sequence[Path]) -> dict[str, Fallback]:
    """The entries of every file in ``paths`` (a builder in several: the latest learned);
    a missing or unreadable file, or a malformed entry, is none."""
    return latest_entries(paths, _entry, lambda fallback: fallback.learned)


def _entry(entry: object) -> Fallback | None:
    if not isinstance(entry, dict):
        return None
    reason, learned = entry.get("reason"), entry.get("learned")
    if not isinstance(reason, str) or not reason or not isinstance(learned, int | float):
        return None
    return Fallback(reason, float(learned))


def record_fallbacks(path: Path, learned: Mapping[str, str | None], now: float) -> None:
    """Merge what was ``learned`` (a reason: counted here only; None: counted on the builder)
    into ``path``; nothing is written when that changes nothing it says."""
    with merging(path):
        current = load_fallbacks([path])
        changed = dict(current)
        for name, reason in learned.items():
            if reason is None:
                changed.pop(name, None)
            elif name not in current or current[name].reason != reason:
                changed[name] = Fallback(reason, now)
        if changed == current:
            return
        data = {
            name: {"reason": f.reason, "learned": f.learned} for name, f in sorted(changed.items())
        }
        write_state_json(path, data)
