"""Builder backoff remembered across runs: ``<state>/backoff.json``.

A builder that failed is backed off (policy: 60 s x 3^(n-1)); without memory, every new run
would pay the connect timeout again for each dead builder (nix#13513). Times are wall-clock
seconds so they survive the process. An entry whose backoff ended is kept for
``REMEMBERED`` more seconds (``load_backoff(..., ended_within=REMEMBERED)``): the builder is
tried again, and if it fails again its failures go on counting, so a builder down for days is
tried every 27 minutes, not every minute. A successful build resets a machine's entry, and
``offload machines --reset NAME`` does it by hand (``clear_backoff``). An entry says why
(``reason``: the error of the failure that backed it off, as ``reason_line`` makes it: one line,
at most ``REASON_CHARS``), for people to read; an entry written before reasons were kept has
none, and reads as ``reason=None``: not known.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from offload.state_json import merging, read_state_json, write_state_json

if TYPE_CHECKING:
    from offload.config.pool import Pool

__all__ = [
    "REASON_CHARS",
    "REMEMBERED",
    "UNKNOWN_REASON",
    "Health",
    "change_backoff",
    "clear_backoff",
    "connections",
    "earlier_failures",
    "load_backoff",
    "load_backoffs",
    "reason_line",
    "save_backoff",
]

# Long enough for an explained ssh failure and its fix (a key path, a machines file and line);
# short enough that a builder's chatter cannot grow the file or a status line without end.
REASON_CHARS = 400
UNKNOWN_REASON = "why is not known (backed off by an offload that did not keep reasons)"
# An entry further ahead than this (offload backs off for 27 minutes at most), or with more
# failures, was not written by offload for this clock: a hand edit, a damaged file, a clock
# that was far ahead. Read as none: its time is past what a date can show (1e300 made every
# command that shows it, offload build's first line, an internal error), and a builder would
# otherwise stay left out for years.
_MAX_AHEAD = 86400.0
# How long an entry is kept after its backoff ended (module docstring): a day, so a builder
# off for the night is not tried every minute in the morning, and one mended in between is
# not held to a failure from last week.
REMEMBERED = 86400.0
_MAX_FAILURES = 10**9


@dataclass(frozen=True)
class Health:
    failures: int
    until: float  # wall clock; the machine may be tried again from then on
    reason: str | None = None  # None: not known (an entry from before reasons were kept)
    # The machines line it failed with (``Machine.connection_id``), and when it was backed
    # off (wall clock); None: not known (an entry from before they were kept).
    connection: str | None = None
    since: float | None = None

    @property
    def why(self) -> str:
        """The reason, or that it is not known, as said to people."""
        return self.reason or UNKNOWN_REASON

    def said(self, name: str) -> str:
        """Why builder ``name`` is left out, and how to have it tried, as a run says it."""
        return (
            f"backed off after {self.failures} failure(s) in earlier runs: {self.why} "
            f"(fixed since? `offload machines --reset {name}` tries it from the next run)"
        )


def connections(pool: Pool) -> dict[str, str]:
    """Each of ``pool``'s machines' ``connection_id``: what ``load_backoff`` compares."""
    return {machine.name: machine.connection_id for machine in pool.machines}


def reason_line(text: str, limit: int = REASON_CHARS) -> str:
    """``text`` on one line (every run of whitespace, newlines included, one space), cut to
    ``limit`` characters with ``...``: ssh's errors span lines, and a state file and a status
    row hold one."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def load_backoff(
    path: Path,
    now: float,
    connections: Mapping[str, str] | None = None,
    *,
    ended_within: float = 0.0,
) -> dict[str, Health]:
    """Entries still in force at ``now`` (and those that ended less than ``ended_within``
    seconds ago); a missing or unreadable file means none. With ``connections`` (each
    machine's ``connection_id`` now), an entry for a machine whose line was mended since it
    failed (its URI, key or host key) is not in force: the fix is tried."""
    data = read_state_json(path)
    if not isinstance(data, dict):
        return {}
    result = {}
    for name, entry in data.items():
        health = _entry(entry)
        if health is None or not (now - ended_within < health.until <= now + _MAX_AHEAD):
            continue
        if connections is not None and _mended(health, connections.get(str(name))):
            continue
        result[str(name)] = health
    return result


def earlier_failures(
    path: Path, now: float, connections: Mapping[str, str] | None = None
) -> dict[str, int]:
    """The failures kept of each machine, backed off still or until less than ``REMEMBERED``
    ago: tried again (its backoff ended, or a run was told to try it), it goes on counting
    from them if it fails."""
    recent = load_backoff(path, now, connections, ended_within=REMEMBERED)
    return {name: health.failures for name, health in recent.items()}


def _mended(health: Health, connection: str | None) -> bool:
    """Whether the machine's line (now ``connection``) is not the one ``health`` failed with."""
    return None not in (health.connection, connection) and connection != health.connection


def _entry(entry: object) -> Health | None:
    """One entry of the file, or None where it is not one offload wrote."""
    if not isinstance(entry, dict):
        return None
    try:
        failures, until = int(entry["failures"]), float(entry["until"])
    except (KeyError, TypeError, ValueError, OverflowError):  # int(Infinity), float(10**400)
        return None
    if not 0 < failures <= _MAX_FAILURES:
        return None
    reason = entry.get("reason")
    connection, since = entry.get("connection"), entry.get("since")
    return Health(
        failures,
        until,
        # Bounded even if written by hand.
        reason_line(reason) if isinstance(reason, str) and reason.strip() else None,
        connection if isinstance(connection, str) else None,
        float(since) if isinstance(since, int | float) and not isinstance(since, bool) else None,
    )


def save_backoff(
    path: Path,
    changes: Mapping[str, Health | None],
    now: float,
    *,
    healthy_at: Mapping[str, float] | None = None,
) -> None:
    """Merge ``changes`` (None: the machine is healthy) into the file, atomically, mode 0600.
    ``healthy_at``: when a machine was last seen healthy (its last build), for one said
    healthy: an entry another process wrote after that (offload-hook found it down since) is
    kept."""
    with merging(path):
        current = load_backoff(path, now, ended_within=REMEMBERED)
        for name, health in changes.items():
            if health is not None:
                current[name] = health
            elif not _newer(current.get(name), (healthy_at or {}).get(name)):
                current.pop(name, None)
        _write(path, current)


def _newer(entry: Health | None, healthy: float | None) -> bool:
    """Whether ``entry`` was written after the machine was seen ``healthy`` (wall clock)."""
    return (
        entry is not None and entry.since is not None and healthy is not None
        and entry.since > healthy
    )  # fmt: skip


def change_backoff(
    path: Path, name: str, change: Callable[[Health | None], Health | None], now: float
) -> Health | None:
    """``name``'s entry made by ``change`` from the one in force in the file now (None: none),
    read and written under the file's lock: two processes failing at once on one builder
    each count a failure, where reading it first, then saving, lost one. ``change`` is given
    an entry whose backoff ended within ``REMEMBERED`` too. Returns the entry."""
    with merging(path):
        current = load_backoff(path, now, ended_within=REMEMBERED)
        changed = change(current.get(name))
        if changed == current.get(name):
            return changed
        if changed is None:
            current.pop(name, None)
        else:
            current[name] = changed
        _write(path, current)
        return changed


def _write(path: Path, entries: Mapping[str, Health]) -> None:
    data: dict[str, dict[str, object]] = {}
    for name, health in sorted(entries.items()):
        data[name] = {"failures": health.failures, "until": health.until}
        if health.reason is not None and health.reason.strip():
            data[name]["reason"] = reason_line(health.reason)
        if health.connection is not None:
            data[name]["connection"] = health.connection
        if health.since is not None:
            data[name]["since"] = health.since
    write_state_json(path, data)


def load_backoffs(
    paths: Sequence[Path], now: float, connections: Mapping[str, str] | None = None
) -> dict[str, Health]:
    """Entries in force in any of ``paths`` (``load_backoff``); a machine backed off in
    several shows the latest."""
    merged: dict[str, Health] = {}
    for path in paths:
        for name, health in load_backoff(path, now, connections).items():
            if name not in merged or health.until > merged[name].until:
                merged[name] = health
    return merged


def clear_backoff(path: Path, names: Sequence[str], now: float) -> list[str]:
    """Forget the backoff of ``names`` in ``path``, and the failures it remembers of them;
    returns those that had one in force."""
    current = load_backoff(path, now, ended_within=REMEMBERED)
    known = [name for name in names if name in current]
    if known:
        save_backoff(path, dict.fromkeys(known), now)
    return [name for name in known if current[name].until > now]
