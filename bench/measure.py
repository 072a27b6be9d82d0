"""What the benchmark measures around each command: wall time, builds per machine, bytes moved.

Both tools are judged by the same outside measures where one exists (wall time of the whole
command, store growth on the fleet members) and by their own account where only they know it:
stock Nix says where it builds each derivation on stderr (``building '/nix/store/...drv' on
'ssh://NAME'``; local builds have no ``on``), offload says it in its ``--json`` event lines.

Bytes are measured as store growth: the fleet members' stores are directories on this host, so
listing them before and after a build shows which paths arrived. Paths a member built itself are
outputs, everything else it gained was sent to it. These are file-content bytes, not NAR or wire
bytes, and they count the same way for both tools. Wire bytes of a copy come from ssh's own
``Transferred: sent N, received M bytes`` line (``LogLevel=VERBOSE``).

Parsers here are pure and never raise on a malformed line; ``run_timed`` is the one place a
benchmarked command runs, inside ``offload.process.spawn`` so it is always stopped (timeout,
Ctrl-C) together with its process group.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import time
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from offload.names import LOCAL
from offload.process import spawn

__all__ = [
    "BuildAccount",
    "StoreSnapshot",
    "Timed",
    "WireBytes",
    "json_events",
    "list_store",
    "machine_name",
    "parse_nix_builds",
    "parse_offload_events",
    "parse_ssh_transferred",
    "path_bytes",
    "per_build",
    "received_bytes",
    "run_timed",
    "store_name",
]

_NIX_BUILDING = re.compile(r"^building '(/[^']+\.drv)'(?: on '([^']+)')?")
_SSH_TRANSFERRED = re.compile(r"Transferred: sent (\d+), received (\d+) bytes")


@dataclass(frozen=True)
class Timed:
    """A finished (or stopped) command: exit code, wall seconds and its output."""

    argv: tuple[str, ...]
    returncode: int | None  # None: stopped at the timeout
    elapsed: float
    stdout: str
    stderr: str

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    def tail(self, lines: int = 8) -> str:
        """The last lines of stderr (or stdout), for a failure's record."""
        text = self.stderr.strip() or self.stdout.strip()
        return "\n".join(text.splitlines()[-lines:])


async def _run_timed(argv: Sequence[str], env: Mapping[str, str] | None, timeout: float) -> Timed:
    began = time.monotonic()
    async with spawn(argv, env=env, stdin=False) as proc:
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            # spawn's exit stops the whole process group (SIGTERM, then SIGKILL).
            return Timed(tuple(argv), None, time.monotonic() - began, "", "")
        elapsed = time.monotonic() - began
    return Timed(
        tuple(argv),
        proc.returncode,
        elapsed,
        out.decode(errors="replace"),
        err.decode(errors="replace"),
    )


def json_events(stdout: str) -> list[dict[str, Any]]:
    """The JSON objects of ``offload build --json``'s output, one a line; other lines skipped."""
    out = []
    for line in stdout.splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict):
            out.append(event)
    return out


def per_build(events: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Median seconds per built derivation: set-up (to "building"), building, fetching."""
    marks: dict[tuple[str, str], dict[str, float]] = {}
    for e in events:
        if e.get("event") == "job_phase" and not e.get("step"):
            key = (str(e["drv_path"]), str(e["machine"]))
            marks.setdefault(key, {}).setdefault(str(e["phase"]), float(e["time"]))
    parts: dict[str, list[float]] = {"set-up": [], "building": [], "fetching": []}
    for e in events:
        if e.get("event") != "job_finished" or e.get("status") != "built":
            continue
        seen = marks.get((str(e["drv_path"]), str(e["machine"])), {})
        if "building" not in seen:
            continue
        start, build, end = min(seen.values()), seen["building"], float(e["finished"])
        fetch = seen.get("fetching", end)
        parts["set-up"].append(build - start)
        parts["building"].append(fetch - build)
        parts["fetching"].append(end - fetch)
    return {k: round(statistics.median(v), 4) for k, v in parts.items() if v}


def run_timed(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float,
) -> Timed:
    """Run ``argv`` to completion or until ``timeout`` s; wall time from start to exit.

    Paths in ``argv`` must be absolute: the command runs in this process's directory.
    """
    return asyncio.run(_run_timed(argv, env, timeout))


def store_name(path: str) -> str:
    """``/nix/store/<hash>-NAME[.drv]`` -> ``NAME`` (without ``.drv``)."""
    base = path.rstrip("/").rsplit("/", 1)[-1]
    name = base.split("-", 1)[1] if "-" in base else base
    return name.removesuffix(".drv")


def machine_name(uri: str) -> str:
    """``ssh://root@fast?ssh-key=k`` -> ``fast``: the fleet member's alias as offload names it."""
    host = uri.split("://", 1)[-1]
    host = host.rsplit("@", 1)[-1]
    return host.split("?", 1)[0] or LOCAL


@dataclass(frozen=True)
class BuildAccount:
    """Which derivation each machine built, and the bytes a tool itself reported (if it did)."""

    built: Mapping[str, str] = field(default_factory=dict)  # drv path -> machine
    bytes_sent: int | None = None
    bytes_received: int | None = None
    outputs: tuple[str, ...] = ()
    bad_lines: int = 0
    # offload's own span from its first scheduling decision to its last build: wall time less
    # start-up (Python, evaluation, ssh handshakes) and shutdown.
    run_s: float | None = None

    def per_machine(self) -> dict[str, int]:
        return dict(sorted(Counter(self.built.values()).items()))

    def names_by_machine(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for drv, machine in self.built.items():
            out.setdefault(machine, set()).add(store_name(drv))
        return out


def parse_nix_builds(stderr: str, stdout: str = "") -> BuildAccount:
    """Builds per machine from nix-build's stderr; outputs are its stdout lines."""
    built: dict[str, str] = {}
    for line in stderr.splitlines():
        match = _NIX_BUILDING.match(line.strip())
        if match:
            drv, uri = match.groups()
            built[drv] = machine_name(uri) if uri else LOCAL
    outputs = tuple(line for line in stdout.split() if line.startswith("/"))
    return BuildAccount(built, None, None, outputs)


def parse_offload_events(stdout: str) -> BuildAccount:
    """Builds per machine and bytes moved from ``offload build --json`` event lines."""
    built: dict[str, str] = {}
    sent = received = 0
    outputs: tuple[str, ...] = ()
    bad = 0
    run_s: float | None = None
    for line in stdout.splitlines():
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if not isinstance(event, dict):
            bad += 1
            continue
        kind = event.get("event")
        if kind == "job_finished":
            sent += _int(event.get("bytes_sent"))
            received += _int(event.get("bytes_received"))
            if event.get("status") == "built":
                built[str(event.get("drv_path"))] = str(event.get("machine") or LOCAL)
        elif kind == "run_finished":
            raw = event.get("outputs")
            if isinstance(raw, list):
                outputs = tuple(str(p) for p in raw)
            elapsed = event.get("elapsed")
            if isinstance(elapsed, int | float) and not isinstance(elapsed, bool):
                run_s = float(elapsed)
    return BuildAccount(built, sent, received, outputs, bad, run_s)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@dataclass(frozen=True)
class WireBytes:
    sent: int
    received: int


def parse_ssh_transferred(lines: Iterable[str]) -> WireBytes | None:
    """Sum ssh's ``Transferred: sent N, received M bytes`` lines (one per ssh that exited)."""
    sent = received = 0
    found = False
    for line in lines:
        match = _SSH_TRANSFERRED.search(line)
        if match:
            found = True
            sent += int(match.group(1))
            received += int(match.group(2))
    return WireBytes(sent, received) if found else None


def path_bytes(path: Path) -> int:
    """File-content bytes under a store path (symlinks count their own size)."""
    try:
        top = path.lstat()
    except OSError:
        return 0
    if not path.is_dir() or path.is_symlink():
        return top.st_size
    total = 0
    for root, dirs, files in os.walk(path):
        for name in files + [d for d in dirs if (Path(root) / d).is_symlink()]:
            try:
                total += (Path(root) / name).lstat().st_size
            except OSError:
                continue
    return total


@dataclass(frozen=True)
class StoreSnapshot:
    """The entries of each member's store directory (on this host) at one moment."""

    stores: Mapping[str, Path]
    entries: Mapping[str, frozenset[str]]

    @classmethod
    def take(cls, stores: Mapping[str, Path]) -> StoreSnapshot:
        entries = {}
        for machine, store in stores.items():
            try:
                names = frozenset(p.name for p in store.iterdir() if not p.name.startswith("."))
            except OSError:
                names = frozenset()
            entries[machine] = names
        return cls(stores, entries)

    def growth(self, after: StoreSnapshot, built: BuildAccount) -> tuple[int, int]:
        """(bytes sent to members, bytes of outputs members built) between two snapshots.

        Stock Nix copies every remotely built output back, so the second number is also what
        Nix's hook received; offload may leave intermediate outputs where they were built.
        """
        by_machine = built.names_by_machine()
        sent = outputs = 0
        for machine, store in self.stores.items():
            new = after.entries.get(machine, frozenset()) - self.entries.get(machine, frozenset())
            mine = by_machine.get(machine, set())
            for entry in new:
                size = path_bytes(store / entry)
                if not entry.endswith(".drv") and store_name(entry) in mine:
                    outputs += size
                else:
                    sent += size
        return sent, outputs


def list_store(store: Path, names: Collection[str]) -> frozenset[str]:
    """Entries of ``store`` (this machine's, shared with others) whose name is one of ``names``."""
    try:
        return frozenset(p.name for p in store.iterdir() if store_name(p.name) in names)
    except OSError:
        return frozenset()


def received_bytes(
    store: Path, before: frozenset[str], after: frozenset[str], built: BuildAccount
) -> int:
    """Bytes of outputs that arrived in this machine's store without being built here.

    The same outside measure for both tools: Nix's hook copies every remote output back, offload
    only what is needed here.
    """
    local = built.names_by_machine().get(LOCAL, set())
    return sum(
        path_bytes(store / entry)
        for entry in after - before
        if not entry.endswith(".drv") and store_name(entry) not in local
    )
