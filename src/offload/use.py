"""The builder choice in force: ``offload use NAME,...|@TAG [--for DURATION]``.

Builds started by Nix itself (``nixos-rebuild``, ``nix build``, the nix-daemon) reach offload
only through its hook, whose environment and arguments the user does not control. So the
choice lives in a file the hook reads at each derivation: ``<state>/use.json``, holding the
``--on`` tokens offload build takes (names, ``@tags``, ``local``), when it was set and until
when (none: until cleared). A choice past its time is not in force. The file is written
atomically, mode 0644 (it holds only machine names), in the state directory (mode 0700: the
system one, ``/var/lib/offload``, is written and read by root alone).

A choice is set (or cleared) in several places at once, the user's state directory and the
system one, and ``set_choice`` sets it in all of them or in none: a place it cannot write is
an ``OffloadError`` naming it, and the places already written are put back as they were, so
no hook is left with a choice the command said it could not make.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from offload.errors import ConfigError, OffloadError
from offload.state_json import MAX_BYTES, read_state_json

__all__ = [
    "USE_FILE",
    "Choice",
    "clear_choice",
    "parse_duration",
    "read_choice",
    "set_choice",
    "write_choice",
]

USE_FILE = "use.json"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"([0-9]{1,12})([smhd])")  # 9999999s is 115 days: a duration
# The longest duration taken (about 2700 years): a choice in force longer was not written by
# offload (a hand edit, a damaged file), and until 1e300 was an internal error.
_LONGEST = 10**6 * 86400.0


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
    if pos != len(text) or not text:
        raise ConfigError(
            f"{flag} {text!r}: not a duration", hint="write it as 90s, 30m, 2h or 1h30m"
        )
    if total <= 0:  # well written, but "not a duration" sent users to check its spelling
        raise ConfigError(f"{flag} {text!r}: a duration of 0", hint="give one longer than 0s")
    if total > _LONGEST:
        raise ConfigError(
            f"{flag} {text!r}: longer than {_LONGEST / 86400:.0f} days",
            hint="give a shorter one: 30d is a month",
        )
    return float(total)


def read_choice(state: Path, now: float) -> Choice | None:
    """The choice in force, or None (none set, expired, or the file unreadable)."""
    data = read_state_json(state / USE_FILE)
    if not isinstance(data, dict):
        return None
    try:
        named = data["machines"]
        # A list of names: a string is iterable too, and "fast" read as f, a, s, t.
        if not isinstance(named, list) or not all(isinstance(m, str) for m in named):
            return None
        machines = tuple(named)
        since = float(data["since"])
        until = None if data.get("until") is None else float(data["until"])
    except (ValueError, KeyError, TypeError, OverflowError):  # OverflowError: float(10**400)
        return None
    if until is not None and not until <= now + _LONGEST:  # nan too
        return None  # not offload's (a hand edit, a damaged file): past any date it can show
    choice = Choice(machines, since, until)
    return choice if machines and choice.in_force(now) else None


def write_choice(state: Path, choice: Choice) -> Path:
    data = {"machines": list(choice.machines), "since": choice.since, "until": choice.until}
    return _replace(state, json.dumps(data).encode())


def clear_choice(state: Path) -> bool:
    """Whether there was a choice file to remove (none: also when ``state`` cannot be a
    directory, a file in its way)."""
    try:
        (state / USE_FILE).unlink()
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def set_choice(places: Sequence[Path], choice: Choice | None, hint: Callable[[Path], str]) -> None:
    """``choice`` (None: cleared) in every one of ``places``, or in none: ``OffloadError`` for
    the first place that cannot be written (``hint(place)``: how to fix it), the places
    written before it restored."""
    written: list[tuple[Path, bytes | None]] = []
    for place in places:
        try:
            before = _saved(place)
            if choice is None:
                if before is not None:  # a read-only mount refuses even to remove no file
                    clear_choice(place)
            else:
                write_choice(place, choice)
        except OSError as exc:
            verb = "clear" if choice is None else "write"
            msg = f"{place}: cannot {verb} the builder choice: {exc.strerror or exc}"
            raise OffloadError(msg + _restored(written), hint=hint(place)) from exc
        written.append((place, before))


def _saved(place: Path) -> bytes | None:
    """The choice file's bytes in ``place`` as they are (at most ``MAX_BYTES``: a bigger one
    is no choice offload wrote), None where there is none. Something else in its place (a
    FIFO, a device: damage, as ``read_choice`` takes it) is not read, which would hang or
    never end: ``b""``, so that it is replaced or cleared all the same."""
    path = place / USE_FILE
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            return b""
        with path.open("rb") as saved:
            return saved.read(MAX_BYTES)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _restored(written: Sequence[tuple[Path, bytes | None]]) -> str:
    """``written`` put back as they were; what the error adds for it."""
    kept = []
    for place, before in written:
        try:
            if before is None:
                clear_choice(place)
            else:
                _replace(place, before)
        except OSError as exc:  # the message says which place was left changed
            kept.append(f"{place} could not be put back ({exc.strerror or exc})")
    return "; " + ", ".join(kept) if kept else "; nothing was changed"


def _replace(state: Path, data: bytes) -> Path:
    """``data`` as the choice file of ``state`` (made 0700 if missing), replaced atomically."""
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=state, prefix=".use-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        Path(tmp).chmod(0o644)
        Path(tmp).replace(state / USE_FILE)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        raise
    return state / USE_FILE
