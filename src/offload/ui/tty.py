"""The live view on a terminal: a ``rich.live.Live`` drawing ``ui.view.View``'s frame.

The view is redrawn after a state event, at most every ``MIN_REDRAW`` seconds (what comes
between is drawn by the next: a flood of small builds redrew it 350 times a second, half the
run's CPU), and by rich's own timer (so elapsed times and the ETA move while nothing happens);
``transient=False`` keeps its final frame on screen, which ``View`` makes the run's truth (no
job rows, "finished" or "interrupted"). A run with nothing to build draws nothing at all. With
``print_logs`` each build log line is printed above the live region through the Live's console,
as ``name> line``, sanitised, whole (the terminal wraps it, as nix-build -L's), in batches by a
thread of their own (``ui.above``: the run never waits on the terminal); either way the newest
line of each running build is in its row. Warnings go the same way, in order with the logs.

Rich's refresh thread reads the state while the run's thread changes it, so both hold
``self._lock``; the lock is never held while calling into rich, which takes its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from rich.console import Console, RenderableType
from rich.live import Live
from rich.text import Text

from offload.threads import blocked
from offload.ui.above import Above
from offload.ui.events import Event, JobLog, MachineEvent, RunFinished
from offload.ui.plain import machine_warning
from offload.ui.summary import render_summary
from offload.ui.term import sanitize
from offload.ui.view import View

__all__ = ["MIN_REDRAW", "TtyRenderer"]

# Seconds between two redraws an event asks for; rich's timer draws 4 times a second anyway.
MIN_REDRAW = 0.05


class TtyRenderer:
    def __init__(
        self,
        console: Console,
        *,
        print_logs: bool,
        clock: Callable[[], float] = time.time,
        summary: bool = False,
        auto_refresh: bool = True,
        redirect_stderr: bool = False,
    ) -> None:
        self._console = console
        self._print_logs = print_logs
        self._clock = clock
        self._summary = summary
        self._lock = threading.Lock()
        self._view = View(clock())
        self._live = Live(
            console=console,
            get_renderable=self._render,
            transient=False,
            auto_refresh=auto_refresh,
            redirect_stdout=False,  # output paths go to stdout and must stay there
            redirect_stderr=redirect_stderr,
        )
        self._above = Above(self._print_above, threaded=auto_refresh)
        self._started = False
        self._closed = False
        # Without rich's timer (tests), every event is drawn: nothing would draw the last.
        self._timed = auto_refresh
        self._drawn = -MIN_REDRAW

    def handle(self, event: Event) -> None:
        if isinstance(event, MachineEvent) and event.state in {"unstopped", "cache", "key"}:
            # A kill failing as the run's sessions close (after it, too); a cache left out;
            # a key file missing.
            self._warn(event)
        if self._closed:
            return
        with self._lock:
            self._view.update(event)
            quiet = self._view.idle_run
        # Nothing draws before the run opens (build.run holds what comes first until then): a
        # run that never opens (every builder down at the start) ends on one error line.
        unopened = not self._view.started
        if not self._started and not quiet and not unopened and not isinstance(event, RunFinished):
            self._started = True
            with blocked():  # its refresh thread must not take a Ctrl-C (offload.threads)
                self._live.start()
        if isinstance(event, JobLog) and self._print_logs and self._started:
            self._print_log(event)
        if isinstance(event, RunFinished):
            self.close()
        elif self._started and not isinstance(event, JobLog):
            # A log line shows in its row at the next timed refresh: redrawing the whole view
            # for every line would cost more than the build's output is worth.
            now = time.monotonic()
            if not self._timed or now - self._drawn >= MIN_REDRAW:
                self._drawn = now
                self._live.refresh()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._above.close()  # what is queued, above the last frame
        if self._started:
            self._live.refresh()
            self._live.stop()
        with self._lock:
            finished = list(self._view.finished)
            machines = list(self._view.machines)
            done = self._view.run_finished is not None and not self._view.idle_run
        if done and self._summary:
            self._console.print()
            render_summary(
                finished, self._console.file, rich=True, machines=machines, console=self._console
            )

    def _warn(self, event: MachineEvent) -> None:
        """A line above the live region (or below the summary), as other warnings are."""
        line = machine_warning(event)
        if line is not None:
            if self._closed:  # after the summary: nothing is queued any more
                self._print_above(Text(line))
            else:
                self._above.put(Text(line), droppable=False)

    def _print_log(self, event: JobLog) -> None:
        # Whole, as nix-build -L prints it: the terminal wraps a long line (a compiler's
        # error), above the live region, which is redrawn below it. Cut to the width, the
        # line lost what it was printed for.
        prefix = f"{event.name}> "
        text = Text(prefix + sanitize(event.line))
        text.stylize("bold blue", 0, len(prefix))
        self._above.put(text)

    def _print_above(self, text: Text) -> None:
        self._live.console.print(text, soft_wrap=True, highlight=False)

    def _render(self) -> RenderableType:
        now = self._clock()
        with self._lock:
            return self._view.frame(now, self._console.width, self._console.height)
