"""``--json``: one JSON object per event per line, for programs watching a run.

Each line is ``events.event_dict(event)``: the record's fields plus ``"event"`` naming its kind,
flushed so a reader sees events as they happen: at once outside an event loop, and inside one
at the end of the loop's current step, so the events one step emits (a build's end and the next
one's start) go out in one write, not one each. Non-ASCII text is escaped, so every line is
plain ASCII whatever a build printed.

Build log lines (``job_log``) are written with ``print_logs``: as nix-build shows logs, by
default, not with ``-Q`` (a large build prints hundreds of thousands of lines, which may swamp
the events a consumer wants) or ``--log-format bar``; every log is kept anyway (``offload log
DRV``; not where the run's state directory was a temporary one).

A reader that goes away (``| head -1``) ends the lines, not the run: it builds on, makes its
result links and keeps its history, as nix-build does (``offload.streams``). A stream that
cannot be written (a full disk) ends them too, said once on stderr: a run stopped half-way
for its events' sake would stop its builds.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import TextIO

from offload.streams import reader_gone, unless_gone
from offload.ui.events import Event, JobLog, event_dict

__all__ = ["JsonRenderer"]


class JsonRenderer:
    def __init__(self, stream: TextIO, *, print_logs: bool) -> None:
        self._stream = stream
        self._print_logs = print_logs
        # Lines held until the end of the loop's current step (the stream may write through:
        # PYTHONUNBUFFERED makes every write to stdout a system call of its own).
        self._pending: list[str] = []
        self._failed = False  # the stream could not be written: no more lines

    def handle(self, event: Event) -> None:
        if self._failed or (isinstance(event, JobLog) and not self._print_logs):
            return
        self._pending.append(json.dumps(event_dict(event)) + "\n")
        if len(self._pending) > 1:
            return  # the flush is due already
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._flush()
            return
        loop.call_soon(self._flush)

    def _flush(self) -> None:
        lines, self._pending = self._pending, []
        if self._failed:
            return
        try:
            with unless_gone(self._stream):
                if lines:
                    self._stream.write("".join(lines))
                self._stream.flush()
        except OSError as exc:
            self._failed = True
            reader_gone(self._stream)  # what it holds would fail again at the exit: said once
            sys.stderr.write(
                f"warning: cannot write the --json events: {exc.strerror or exc}; the run goes "
                "on without them\n"
            )

    def close(self) -> None:
        self._flush()
