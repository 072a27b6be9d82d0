"""``--json``: one JSON object per event per line, for programs watching a run.

Each line is ``events.event_dict(event)``: the record's fields plus ``"event"`` naming its kind,
flushed as soon as it is written so a reader sees events as they happen. Non-ASCII text is
escaped, so every line is plain ASCII whatever a build printed.

Build log lines (``job_log``) are written only with ``print_logs`` (``-L``): a large build
prints hundreds of thousands of lines, which would swamp the events a consumer usually wants,
and every log is kept anyway (``offload log DRV``).
"""

from __future__ import annotations

import json
from typing import TextIO

from offload.ui.events import Event, JobLog, event_dict

__all__ = ["JsonRenderer"]


class JsonRenderer:
    def __init__(self, stream: TextIO, *, print_logs: bool) -> None:
        self._stream = stream
        self._print_logs = print_logs

    def handle(self, event: Event) -> None:
        if isinstance(event, JobLog) and not self._print_logs:
            return
        self._stream.write(json.dumps(event_dict(event)) + "\n")
        self._stream.flush()

    def close(self) -> None:
        self._stream.flush()
