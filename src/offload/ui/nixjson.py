"""``--log-format internal-json``: the run as Nix's own JSON logger tells a build, on stderr.

Tools that read Nix's structured log (nix-output-monitor's ``nom --json``, CI log folders) take
``nix-build --log-format internal-json -v |& nom --json``; with offload in its place they see
the same lines. Each is ``@nix `` and one JSON object, as Nix 2.8's ``JSONLogger`` writes them:

- the run is one ``actBuilds`` activity (type 104), and its progress a ``resProgress`` result
  (105: done, expected, running, failed) each time a build starts or ends;
- each copy's build is an ``actBuild`` activity (105) with Nix's fields (the ``.drv``, the
  machine: ``""`` for the local machine as in Nix, else the builder's name; round 1 of 1) and
  text (``building '/nix/store/...drv' on 'fast'``), started at its "building" phase and
  stopped at its end. Its log lines are ``resBuildLogLine`` results (101) and the phases an
  ``ssh-ng://`` builder names ``resSetPhase`` (104). A speculative copy is an activity of its
  own, on its machine, stopped when the copy that won ends it;
- what people read is a ``msg``: a failed build at Nix's error level (0, ``error: ...``, in
  Nix's words when the builder's Nix gave them); a machine down, slow, full or left out at
  its warning level (1), as the plain renderer's ``warning:`` lines say them; the run's start
  and end at info (3); the plain renderer's other lines (built, stopped, a machine up) at
  talkative (4, ``-v``). Lines Nix itself printed (the evaluator's ``trace:`` and warnings,
  the local store's while the run plans) become ``msg`` lines too (``nix_msg``).

As in Nix, a ``msg`` above the run's verbosity (3, Nix's info; ``-v`` adds one, ``--quiet``
takes one away) is not written; activities and results always are, but ``-Q`` drops the log
lines. Ids are Nix's: the process id in the high 32 bits and a count, so they never repeat
within a stream. Text from elsewhere (log lines, a builder's error) is written as received,
JSON-escaped to plain ASCII, as Nix passes it on; the reader decides how to show it. Not told:
the list of derivations to build (Nix's "these N derivations will be built:"), and copies,
which Nix tells path by path (``actCopyPath``) and offload's events tell per build. (nom takes a
build as done when its output appears in the local store: one offload leaves on its builder
looks running to it, unless ``--fetch-all``; README.)
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from typing import Any, TextIO, assert_never

from offload.ansi import strip_ansi
from offload.names import LOCAL
from offload.ui.events import (
    Event,
    JobFinished,
    JobLog,
    JobPhase,
    MachineEvent,
    ReportWritten,
    RunFinished,
    RunStarted,
    Timing,
)
from offload.ui.plain import describe_finished, describe_machine, machine_warning

__all__ = ["NixJsonRenderer", "nix_msg"]

# Nix's verbosity levels (logging.hh) and the activity and result types offload uses.
ERROR, WARN, INFO, TALKATIVE = 0, 1, 3, 4
ACT_BUILDS, ACT_BUILD = 104, 105
RES_BUILD_LOG_LINE, RES_SET_PHASE, RES_PROGRESS = 101, 104, 105


def nix_msg(line: str) -> str:
    """A line Nix printed as plain text (the evaluator's, the local store's while a run plans)
    as the ``msg`` its JSON logger would have written: at error level for ``error:`` and
    ``trace:`` (Nix 2.8 logs traces so), warning for ``warning:``, info otherwise."""
    word = strip_ansi(line).lstrip().partition(":")[0]
    level = {"error": ERROR, "trace": ERROR, "warning": WARN}.get(word, INFO)
    return _nix_line({"action": "msg", "level": level, "msg": line})


def _nix_line(message: dict[str, Any]) -> str:
    """One ``@nix`` line, without its newline, as Nix's JSON logger writes it."""
    return "@nix " + json.dumps(message, separators=(",", ":"))


def _failure(event: JobFinished) -> str:
    """A failed build's ``error:``: Nix's own words when they are its (``builder for '...'
    failed with exit code 3``, which readers such as nom match), else offload's, naming the
    derivation and the machine."""
    error = (event.error or "").strip()
    if error.startswith(f"builder for '{event.drv_path}'"):
        return f"error: {error}"
    where = f" on '{event.machine}'" if event.machine not in ("", LOCAL) else ""
    return f"error: build of '{event.drv_path}'{where} failed: {error or 'no error message'}"


def _activity_ids() -> Iterator[int]:
    return itertools.count((os.getpid() << 32) + 1)


class NixJsonRenderer:
    """Writes Nix's ``@nix`` lines for a run's events to ``stream`` (stderr)."""

    def __init__(self, stream: TextIO, *, verbosity: int = INFO, print_logs: bool = True) -> None:
        self._stream = stream
        self._verbosity = verbosity
        self._print_logs = print_logs  # -Q: no resBuildLogLine
        self._ids = _activity_ids()
        self._run: int | None = None  # the actBuilds activity, once the run opened
        self._builds: dict[tuple[str, str], int] = {}  # (drv, machine) -> its actBuild
        self._expected = 0
        self._done: set[str] = set()  # derivations built: one built again (its outputs lost) once
        self._failed = 0

    def handle(self, event: Event) -> None:
        match event:
            case RunStarted():
                self._run_started(event)
            case JobPhase() if event.phase == "building":
                self._building(event)
            case JobPhase():
                pass  # waiting and copying: Nix's hook tells no activity of a build for them
            case JobLog():
                activity = self._builds.get((event.drv_path, event.machine))
                # None: a line of a copy already said ended (lost with its machine, its
                # session's last words); kept in its log (`offload log`), not an activity
                # started again, which nothing would stop.
                if self._print_logs and activity is not None:
                    self._result(activity, RES_BUILD_LOG_LINE, [event.line])
            case JobFinished():
                self._finished(event)
            case MachineEvent():
                warning = machine_warning(event)
                if warning is not None:
                    self._msg(WARN, warning)
                else:
                    self._msg(TALKATIVE, f"{event.machine}: {describe_machine(event, event.time)}")
            case RunFinished():
                what = event.ending
                if self._run is not None:
                    self._msg(
                        INFO,
                        f"offload: {what}: {event.built} built, {event.failed} failed, "
                        f"{event.skipped} skipped",
                    )
                    self._stop(self._run)
                    self._run = None
            case Timing() | ReportWritten():
                pass  # for programs reading --json; the report's line is said apart
            case _:
                assert_never(event)
        self._stream.flush()

    def close(self) -> None:
        self._stream.flush()

    def _run_started(self, event: RunStarted) -> None:
        self._expected = event.total
        if event.total == 0:
            return  # nothing to build: Nix starts no builds activity either
        self._run = self._start(ACT_BUILDS, ERROR, "")
        machines = ", ".join(event.machines) or "no machines"
        self._msg(INFO, f"offload: {event.total} to build on {machines}")
        self._progress()

    def _building(self, event: JobPhase) -> None:
        key = (event.drv_path, event.machine)
        if event.step is None and key not in self._builds:  # the copy's build begins
            host = "" if event.machine == LOCAL else event.machine
            text = f"building '{event.drv_path}'" + (f" on '{host}'" if host else "")
            fields = [event.drv_path, host, 1, 1]
            self._builds[key] = self._start(ACT_BUILD, INFO, text, fields)
            self._progress()
        elif event.step is not None and (activity := self._builds.get(key)) is not None:
            self._result(activity, RES_SET_PHASE, [event.step])

    def _finished(self, event: JobFinished) -> None:
        activity = self._builds.pop((event.drv_path, event.machine), None)
        if activity is not None:
            self._stop(activity)
        match event.status:
            case "built" | "fetched" | "substituted":
                if event.status == "built":
                    self._done.add(event.drv_path)
                self._msg(TALKATIVE, describe_finished(event))
            case "failed":
                self._failed += 1
                self._msg(ERROR, _failure(event))
            case "lost" | "skipped":
                self._msg(WARN, f"warning: {describe_finished(event)}")
            case "cancelled":
                self._msg(TALKATIVE, describe_finished(event))
            case _:
                assert_never(event.status)
        if self._run is not None:
            self._progress()

    def _progress(self) -> None:
        if self._run is not None:
            running = len(self._builds)
            self._result(
                self._run, RES_PROGRESS, [len(self._done), self._expected, running, self._failed]
            )

    def _start(self, kind: int, level: int, text: str, fields: list[Any] | None = None) -> int:
        activity = next(self._ids)
        line: dict[str, Any] = {"action": "start"}
        if fields is not None:
            line["fields"] = fields
        line.update(id=activity, level=level, text=text, type=kind)
        self._write(line)
        return activity

    def _stop(self, activity: int) -> None:
        self._write({"action": "stop", "id": activity})

    def _result(self, activity: int, kind: int, fields: list[Any]) -> None:
        self._write({"action": "result", "fields": fields, "id": activity, "type": kind})

    def _msg(self, level: int, text: str) -> None:
        if level <= self._verbosity:
            self._write({"action": "msg", "level": level, "msg": text})

    def _write(self, line: dict[str, Any]) -> None:
        self._stream.write(_nix_line(line) + "\n")
