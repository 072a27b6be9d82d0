"""The builds' own record of how many ran at once on each member, for the clients section.

Every build appends ``start MEMBER T ID`` before its work and ``end MEMBER T ID`` after it to one
stamps file, from inside the member (``stamp_shell``; ``ID`` is the build's shell pid: members
are mount namespaces on this host's kernel, without a sandbox, so it is a pid of this host).
A build stopped before its end (offload's losing second copy, a waiting copy moved elsewhere, a
stopped run) writes no end: while the clients run, ``Watch`` reads the stamps file, opens a
pidfd for each started build's process and wakes when it exits, and such a build counts as
running until that moment. The moment matters: a slot a stopped build frees is taken within
milliseconds when a client waits for it, and an end known only at the next look (once polled
every 0.05 s) made two builds overlap where they had not. A build whose process was gone before
its start was read ends when that was seen (an upper bound; ``Watch.late``). A start with
neither an end nor a noted exit counts as running until the last stamp (an upper bound),
reported as ``unfinished``. Lines of the older three-field form (no ``ID``) pair
starts and ends by order alone.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

__all__ = ["MEMBER_FILE", "MemberPeak", "Watch", "peaks", "stamp_shell"]

# In each member's own /etc/nix: its name, for the stamps its builds write.
MEMBER_FILE = "offload-bench-member"
# How often the watch reads the stamps file for new starts (a build's exit wakes it at once).
POLL = 0.05


def stamp_shell(stamps: Path) -> tuple[str, str]:
    """Shell a builder runs before and after its work: a start and an end line in ``stamps``."""
    who = f"$(/bin/cat /etc/nix/{MEMBER_FILE} 2>/dev/null || echo local)"
    now = "$(/bin/date +%s.%N)"
    return (
        f"offload_bench_who={who}; echo start $offload_bench_who {now} $$ >> {stamps}",
        f"echo end $offload_bench_who {now} $$ >> {stamps}",
    )


@dataclass(frozen=True)
class MemberPeak:
    peak: int  # most builds running at once
    builds: int  # builds started
    unfinished: int  # starts with neither an end nor a noted exit
    stopped: int = 0  # starts without an end whose process was seen gone (``Watch``)


def _parse(line: str) -> tuple[str, str, float, str | None] | None:
    fields = line.split()
    if len(fields) not in {3, 4} or fields[0] not in {"start", "end"}:
        return None
    try:
        at = float(fields[2])
    except ValueError:
        return None
    return fields[0], fields[1], at, fields[3] if len(fields) == 4 else None


def peaks(
    lines: Iterable[str], gone: Mapping[str, float] | None = None
) -> tuple[dict[str, MemberPeak], int]:
    """Per member: most builds running at once, builds started, unfinished and stopped ones;
    and the count of lines that are none of these. ``gone`` maps a build's ID to when its
    process was seen gone."""
    gone = gone or {}
    events: dict[str, list[tuple[float, int]]] = {}
    open_ids: set[tuple[str, str]] = set()
    counts: dict[str, list[int]] = {}  # member -> [starts, unmatched ends or open, stopped]
    bad = 0
    for line in lines:
        parsed = _parse(line)
        if parsed is None:
            bad += 1
            continue
        kind, who, at, build = parsed
        tally = counts.setdefault(who, [0, 0, 0])
        # At equal times an end frees its slot before a start takes it.
        events.setdefault(who, []).append((at, 1 if kind == "start" else 0))
        if kind == "start":
            tally[0] += 1
            if build is not None:
                open_ids.add((who, build))
        elif build is not None:
            open_ids.discard((who, build))
    for who, build in sorted(open_ids):
        if build in gone:
            events[who].append((gone[build], 0))
            counts[who][2] += 1
    out = {}
    for who, timeline in sorted(events.items()):
        running = peak = 0
        for _, is_start in sorted(timeline):
            running = running + 1 if is_start else max(running - 1, 0)
            peak = max(peak, running)
        starts, _, stopped = counts[who]
        ends = len(timeline) - starts
        out[who] = MemberPeak(peak, starts, max(starts - ends, 0), stopped)
    return out, bad


@dataclass
class Watch:
    """Follows ``stamps`` while the clients run and notes when a started build's process exits
    without its end stamp (``gone``: ID -> time.time()); ``late``: the IDs whose process was
    gone before the watch read their start, whose time is when that was seen. Use as a context
    manager."""

    stamps: Path
    gone: dict[str, float] = field(default_factory=dict)
    late: set[str] = field(default_factory=set)
    poll: float = POLL  # seconds between reads of the stamps file
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    # Build ID -> its process's pidfd.
    _pidfds: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    # Exits noted and not yet followed by a read of the stamps file (their end may be there).
    _exited: dict[str, float] = field(default_factory=dict, init=False, repr=False)
    _wake: tuple[int, int] = field(default=(-1, -1), init=False, repr=False)  # stop waiting
    _failed: BaseException | None = field(default=None, init=False, repr=False)

    def __enter__(self) -> Self:
        self._wake = os.pipe()
        self._thread = threading.Thread(target=self._run, name="stamps-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        os.write(self._wake[1], b"x")  # out of its wait at once
        if self._thread is not None:
            self._thread.join()
        for fd in self._wake:
            os.close(fd)
        if self._failed is not None:
            # Ends it knows no more: every stopped build would run to the last stamp.
            raise RuntimeError(f"the stamps watch failed: {self._failed!r}") from self._failed

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._wake[0], select.POLLIN)
        try:
            self._follow(poller)
        except BaseException as exc:  # noqa: BLE001 - said by __exit__, in the bench's thread
            self._failed = exc
        finally:
            for build in list(self._pidfds):
                self._forget(build, poller)

    def _follow(self, poller: select.poll) -> None:
        offset = 0
        while True:
            stopping = self._stop.is_set()
            offset, missed = self._read(offset, poller)
            # A build writes its end before it exits: an exit noted before this read with
            # no end in it is a build stopped before its end.
            self.gone.update(self._exited)
            self._exited = missed
            for fd, _ in poller.poll(0 if stopping else self.poll * 1000):
                now = time.time()
                build = next((b for b, f in self._pidfds.items() if f == fd), None)
                if build is not None:  # else the wake-up: stopping is seen at the top
                    self._forget(build, poller)
                    self._exited[build] = now
            if stopping and not self._exited:
                return  # the clients are done, and every exit noted is read past

    def _read(self, offset: int, poller: select.poll) -> tuple[int, dict[str, float]]:
        """Reads the stamps past ``offset``: watches each new start's process, forgets each
        end's. Returns the new offset and the new starts whose process was gone already."""
        try:
            with self.stamps.open("rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return offset, {}
        complete = data[: data.rfind(b"\n") + 1]
        started: dict[str, None] = {}
        for line in complete.decode(errors="replace").splitlines():
            parsed = _parse(line)
            if parsed is None or parsed[3] is None or not parsed[3].isdigit():
                continue
            if parsed[0] == "start":
                started[parsed[3]] = None
            else:
                started.pop(parsed[3], None)
                self._exited.pop(parsed[3], None)
                self.late.discard(parsed[3])
                self._forget(parsed[3], poller)
        missed = {}
        for build in started:
            fd = _pidfd(int(build))
            if fd is None:  # gone already: its end is when this was seen
                missed[build] = time.time()
                self.late.add(build)
                continue
            self._pidfds[build] = fd
            poller.register(fd, select.POLLIN)
        return offset + len(complete), missed

    def _forget(self, build: str, poller: select.poll) -> None:
        fd = self._pidfds.pop(build, None)
        if fd is not None:
            poller.unregister(fd)
            os.close(fd)


def _pidfd(pid: int) -> int | None:
    """A pidfd of process ``pid`` while it runs; None once it has exited (reaped or not)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    if select.select([fd], [], [], 0)[0]:  # exited, not yet reaped
        os.close(fd)
        return None
    return fd
