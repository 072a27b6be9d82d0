"""A binary cache (substituter) Nix could not use, told as a fault of the run's own.

Nix opens each of its substituters the first time it is asked to substitute; one that fails
to open is left out for the rest of that Nix process, with one ``warning:`` line and no other
trace (``getDefaultSubstituters``, store-api.cc: ``logWarning(e.info())``), and the run goes on
building what it would have given. A cache that opened but then fails is disabled for a while,
with one line (``maybeDisable``, http-binary-cache-store.cc: ``printError``, no prefix).
``CacheFaults`` reads Nix's lines as they come and tells each cache left out once per machine,
as a "cache" machine event: the lines themselves still go where they went (the local store's
to stderr as nix-build shows them; a builder's, with builders-use-substitutes, to the log of
the build whose inputs it was asked to substitute).

Nix's words for it, by version, are read in ``offload.cache_words``, each machine's lines as
blocks (``CacheLines``: an HTTP error quoting a response body is a retry only if its block
ends with ``; retrying``); a block still held when an event comes is told then (Nix writes a
block at once), or at ``end``. Some are ``error:`` lines
(an ``ssh://`` cache): Nix goes on after them only with ``--fallback``, and without it stops
with them, which on a builder ends the session the build's inputs went over. So a builder's
such line is told once that session goes on (its build's next line, or an event of the run's
for that build, or for the builder), and not when that event is the session's end with those
very words: the builder is then down with them (its Nix stopped on its cache), and no cache
was left out while a build went on. Another build's session on the same builder says its own
lines meanwhile (each Nix there tries the cache): they are no sign the first one went on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from offload.cache_words import CacheLines, cache_fault
from offload.protocol.stderr import strip_ansi
from offload.ui.events import Event, JobFinished, JobPhase, MachineEvent

__all__ = ["CacheFaults", "cache_fault"]


class CacheFaults:
    """Tells each cache a machine's Nix leaves out once per run, as it says so (``heard``):
    each Nix process (a session) that opens it says so again.

    A build's log is read only while its inputs are sent (``build_log``): what the build
    itself prints once it runs is its own, and a build may run a Nix of its own (Nix's test
    suite tries caches that fail on purpose). ``emit`` is where the run's events go, so the
    phase of each build is known as it changes. ``substituters``: the caches each machine's
    Nix was given, where known (the local one's), to name a cache its words do not."""

    def __init__(
        self, emit: Callable[[Event], None], substituters: Mapping[str, Sequence[str]] | None = None
    ) -> None:
        self._substituters = substituters or {}
        self._told: set[tuple[str, str]] = set()
        self._building: set[tuple[str, str]] = set()  # (derivation, machine)
        # A builder's error line naming a cache, by (derivation, machine): until that session
        # goes on or stops with it.
        self._held: dict[tuple[str, str], tuple[MachineEvent, str]] = {}
        self._lines: dict[str, CacheLines] = {}  # each machine's lines, read as blocks
        self._out = emit

    def emit(self, event: Event) -> None:
        """``event`` goes on, as the run tells it; a build's phase is noted. A block of a
        machine's lines held (an HTTP error that may quote a body) is told first: Nix writes
        a block at once, so the next event comes after it."""
        self.end()
        if isinstance(event, JobPhase):
            key = (event.drv_path, event.machine)
            if event.phase == "building":
                self._building.add(key)
            else:  # a copy starting again (a retry, another copy there) is read again
                self._building.discard(key)
        if isinstance(event, JobPhase | JobFinished):
            self._settle(event.machine, event.drv_path, _said(event))
        elif isinstance(event, MachineEvent):
            self._settle(event.machine, None, _said(event))
        self._out(event)

    def end(self) -> None:
        """No more lines come yet: each machine's held block of lines is told, if a fault."""
        for machine, lines in self._lines.items():
            fault = lines.end()
            if fault is not None and (told := self._told_event(machine, fault)) is not None:
                self._out(told)

    def build_log(self, drv_path: str, machine: str, line: str) -> None:
        """A line of ``drv_path``'s log on ``machine``: read until the build itself starts.
        An ``error:`` line's own cache is held until ``machine`` goes on (``_settle``)."""
        if (drv_path, machine) in self._building:
            return
        self._settle(machine, drv_path, None)
        plain = strip_ansi(line)
        told = self._read(machine, line)
        own = cache_fault(line, self._substituters.get(machine, ()))
        if told and plain.startswith("error:") and own is not None and told[-1].cache == own[0]:
            *told, last = told
            self._held[drv_path, machine] = (last, plain.removeprefix("error:").strip())
        for event in told:
            self._out(event)

    def heard(self, machine: str, line: str) -> None:
        """``line`` as ``machine``'s Nix said it."""
        for event in self._read(machine, line):
            self._out(event)

    def _read(self, machine: str, line: str) -> list[MachineEvent]:
        """The events telling the caches ``machine``'s lines say it left out as ``line``
        comes, each once."""
        lines = self._lines.get(machine)
        if lines is None:
            lines = self._lines[machine] = CacheLines(self._substituters.get(machine, ()))
        return [e for f in lines.read(line) if (e := self._told_event(machine, f)) is not None]

    def _told_event(self, machine: str, fault: tuple[str, str]) -> MachineEvent | None:
        """The event telling the cache ``fault`` says ``machine`` left out, if not told yet."""
        if (machine, fault[0]) in self._told:
            return None
        cache, why = fault
        self._told.add((machine, cache))
        # Why alone: what follows (built instead, the fix) is the same for every cache, and
        # said by the renderers (once under the summary's list).
        return MachineEvent(machine, "cache", why, None, time.time(), cache=cache)

    def _settle(self, machine: str, drv_path: str | None, said: str | None) -> None:
        """``drv_path``'s session on ``machine`` (every one there, for None: an event of the
        builder's) went on (a line, an event): its held cache is told, unless what it ``said``
        then is its session's end with the held line's words (its Nix stopped)."""
        for key in [k for k in self._held if k[1] == machine and drv_path in (None, k[0])]:
            told, words = self._held.pop(key)
            if said is not None and words in said:
                continue  # the builder is down with its Nix's error: that is the fault told
            self._out(told)


def _said(event: JobPhase | JobFinished | MachineEvent) -> str | None:
    """The words an event for a machine carries: a failure's error, a machine's message."""
    if isinstance(event, JobFinished):
        return event.error
    if isinstance(event, MachineEvent):
        return event.message
    return None
