"""The daemon's stderr frames: what comes before every reply (docs/worker-protocol.md section 3).

The model: after each request the daemon sends zero or more frames (log messages, activities
starting and stopping, results such as build log lines and phases) and then exactly one of
``LAST`` (the reply follows) or ``ERROR`` (the request failed, no reply follows).
``read_frames`` reads them up to that end, handing each log frame to an ``Events`` consumer
and turning ``ERROR`` into a ``DaemonError`` with Nix's message on one line. Anything else (an
unknown tag, a data request during a request that sends none, a field of unknown type) is a
``ProtocolError``: the stream is out of step.

``BuildEvents`` is the consumer a remote build wants: it tracks the daemon's build activities
and passes on builder log lines and phase changes, the way Nix's own progress bar does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from offload.errors import DaemonError, ProtocolError
from offload.protocol.stderr import strip_ansi
from offload.protocol.wire import ByteReader, read_int, read_str, read_text
from offload.protocol.worker.records import ActivityType, Frame, ResultType

__all__ = [
    "ActivityStart",
    "ActivityStop",
    "BuildEvents",
    "Event",
    "Events",
    "Field",
    "LogMessage",
    "Result",
    "read_error",
    "read_frames",
]

logger = logging.getLogger(__name__)

Field = int | str
# A log frame carries a handful of fields; more is a corrupt or hostile stream.
MAX_FIELDS = 1024
MAX_TRACES = 1024


@dataclass(frozen=True)
class LogMessage:
    text: str


@dataclass(frozen=True)
class ActivityStart:
    id: int
    level: int
    type: int
    text: str
    fields: tuple[Field, ...]
    parent: int


@dataclass(frozen=True)
class ActivityStop:
    id: int


@dataclass(frozen=True)
class Result:
    id: int
    type: int
    fields: tuple[Field, ...]


Event = LogMessage | ActivityStart | ActivityStop | Result
Events = Callable[[Event], None]


async def _read_fields(r: ByteReader) -> tuple[Field, ...]:
    count = await read_int(r, "the number of fields")
    if count > MAX_FIELDS:
        raise ProtocolError(f"a log frame claims {count} fields, more than {MAX_FIELDS}")
    fields: list[Field] = []
    for _ in range(count):
        kind = await read_int(r, "a field type")
        if kind == 0:
            fields.append(await read_int(r, "an integer field"))
        elif kind == 1:
            fields.append(await read_text(r, "a string field"))
        else:
            raise ProtocolError(f"unknown log field type {kind}")
    return tuple(fields)


def _one_line(text: str) -> str:
    return " ".join(strip_ansi(text).split()).removeprefix("error: ")


async def read_error(r: ByteReader, minor: int, name: str) -> DaemonError:
    """The body of an ``ERROR`` frame as a ``DaemonError`` (docs section 3.2)."""
    if minor < 26:
        message = await read_text(r, "the error message")
        await read_int(r, "the error status")
        text = _one_line(message)
        return DaemonError(f"{name}: {text}", hint=_hint(text))
    kind = await read_str(r, "the error type")
    if kind != "Error":
        raise ProtocolError(f"unknown error type {kind!r}")
    await read_int(r, "the error level")
    await read_text(r, "the error name")
    message = await read_text(r, "the error message")
    if await read_int(r, "the error position flag"):
        raise ProtocolError("an error frame carries a position; Nix never sends one")
    traces = await read_int(r, "the number of error traces")
    if traces > MAX_TRACES:
        raise ProtocolError(f"an error frame claims {traces} traces")
    texts = []
    for _ in range(traces):
        if await read_int(r, "a trace position flag"):
            raise ProtocolError("an error trace carries a position; Nix never sends one")
        texts.append(await read_text(r, "an error trace"))
    text = _one_line(message)
    if texts:
        text += " (" + "; ".join(_one_line(t) for t in texts) + ")"
    return DaemonError(f"{name}: {text}", hint=_hint(text))


_HINTS = (
    ("is not valid", "copy the path's references to the builder first (dependencies first)"),
    ("not privileged", "the builder's nix-daemon must trust this user (trusted-users)"),
    ("lacks a valid signature", "the builder's nix-daemon must trust this user (trusted-users)"),
    ("hash mismatch", "the NAR sent did not match the narHash given for it"),
)


def _hint(text: str) -> str | None:
    return next((h for key, h in _HINTS if key in text), None)


async def read_frames(r: ByteReader, minor: int, events: Events, name: str) -> None:
    """Read frames up to ``LAST``; raise the daemon's ``ERROR`` as a ``DaemonError``."""
    while True:
        tag = await read_int(r, "a stderr frame tag")
        if tag == Frame.LAST:
            return
        if tag == Frame.ERROR:
            raise await read_error(r, minor, name)
        event = await _read_event(r, tag)
        try:
            events(event)
        except Exception:
            # A broken consumer must not desynchronise the connection.
            logger.exception("log consumer failed on %s", name)


async def _read_event(r: ByteReader, tag: int) -> Event:
    if tag == Frame.NEXT:
        return LogMessage((await read_text(r, "a log message")).rstrip("\n"))
    if tag == Frame.START_ACTIVITY:
        act = await read_int(r, "an activity id")
        level = await read_int(r, "an activity level")
        kind = await read_int(r, "an activity type")
        text = await read_text(r, "an activity text")
        fields = await _read_fields(r)
        parent = await read_int(r, "a parent activity id")
        return ActivityStart(act, level, kind, text, fields, parent)
    if tag == Frame.STOP_ACTIVITY:
        return ActivityStop(await read_int(r, "an activity id"))
    if tag == Frame.RESULT:
        act = await read_int(r, "an activity id")
        kind = await read_int(r, "a result type")
        return Result(act, kind, await _read_fields(r))
    if tag in {Frame.READ, Frame.WRITE}:
        # Only the obsolete ops (ImportPaths, ExportPath, unframed AddToStoreNar) use these.
        raise ProtocolError(f"the daemon asked for a data transfer ({Frame(tag).name}) no op sent")
    raise ProtocolError(f"unknown stderr frame {tag:#x}")


class BuildEvents:
    """Turns the daemon's events into builder log lines and build phases.

    ``on_log`` gets each line the builder printed (``resBuildLogLine``) and each message the
    daemon logged (``STDERR_NEXT``); ``on_phase`` gets ``(drv_path, phase)`` when a builder
    announces a phase (``@nix {"action":"setPhase",...}``, e.g. stdenv's phases).
    """

    def __init__(
        self,
        on_log: Callable[[str], None] | None = None,
        on_phase: Callable[[str, str], None] | None = None,
    ) -> None:
        self.on_log = on_log
        self.on_phase = on_phase
        self._builds: dict[int, str] = {}

    def __call__(self, event: Event) -> None:
        if isinstance(event, LogMessage):
            self._log(event.text)
        elif isinstance(event, ActivityStart):
            if event.type == ActivityType.BUILD:
                drv = event.fields[0] if event.fields else ""
                self._builds[event.id] = drv if isinstance(drv, str) else ""
        elif isinstance(event, ActivityStop):
            self._builds.pop(event.id, None)
        else:
            self._result(event)

    def _result(self, event: Result) -> None:
        text = event.fields[0] if event.fields else None
        if not isinstance(text, str):
            return
        if event.type in {ResultType.BUILD_LOG_LINE, ResultType.POST_BUILD_LOG_LINE}:
            self._log(text)
        elif event.type == ResultType.SET_PHASE and self.on_phase is not None:
            self.on_phase(self._builds.get(event.id, ""), text)

    def _log(self, line: str) -> None:
        if self.on_log is not None:
            self.on_log(line)
