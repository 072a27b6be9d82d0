"""Lines printed above the live region (build logs, warnings), off the run's thread.

Each print above a ``rich.live.Live`` redraws the whole live region below it. Printed one by
one from the run's own thread, a build that prints 20,000 lines (a compiler's, a test
suite's) redrew it 20,000 times while the run waited on the terminal: builds on other machines
started late, and the times history keeps for them grew (a tester: 9 s of CPU against 0.9 s,
a 1 s build kept as 5.8 s, its estimate and its machine's measured speed wrong after it).

So the run's thread only queues a line here, and a thread of their own prints what has queued,
every ``BATCH`` seconds at most, in one print: one redraw a batch, whatever the output's rate. A
terminal slower than the builds' output keeps at most ``MAX_QUEUED`` log lines waiting: the
oldest are dropped beyond that, and how many is said in their place (``offload log`` keeps every
line); a warning is never dropped. A terminal that fails (gone: EIO) ends the printing, without
a traceback from the thread: what comes after is not printed. ``close`` prints what is left and
ends the thread, before the live region's last frame. Without a thread (``threaded=False``:
rich's timer off, in tests) each line is printed as it comes, in order with everything else.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from rich.text import Text

from offload.threads import start

__all__ = ["BATCH", "MAX_QUEUED", "Above"]

# Seconds between two batches: as often as an event may redraw the view (``tty.MIN_REDRAW``).
BATCH = 0.05
MAX_QUEUED = 10_000


class Above:
    """What is printed above the live region, in order; ``show`` prints one batch."""

    def __init__(self, show: Callable[[Text], None], *, threaded: bool) -> None:
        self._show = show
        self._queue: deque[tuple[Text, bool]] = deque()  # each line, and if it may be dropped
        self._dropped = 0
        self._closing = False
        self._broken = False  # the terminal failed: nothing more is printed
        self._changed = threading.Condition()
        self._thread = (
            start(threading.Thread(target=self._run, name="offload-log", daemon=True))
            if threaded
            else None
        )

    def put(self, line: Text, *, droppable: bool = True) -> None:
        """Queue ``line``; one not ``droppable`` (a warning) is kept however many wait."""
        if self._thread is None:
            self._show(line)
            return
        with self._changed:
            if self._broken:
                return
            if len(self._queue) >= MAX_QUEUED:
                self._drop_oldest()
            self._queue.append((line, droppable))
            self._changed.notify()

    def _drop_oldest(self) -> None:
        """The oldest log line waiting dropped (rare: a terminal that cannot keep up)."""
        for n, (_, droppable) in enumerate(self._queue):
            if droppable:
                del self._queue[n]
                self._dropped += 1
                return

    def close(self) -> None:
        """Print what is queued, and stop printing (a line put later is not printed)."""
        if self._thread is None:
            return
        with self._changed:
            self._closing = True
            self._changed.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._queue or self._closing)
                batch = [line for line, _ in self._queue]
                dropped, closing = self._dropped, self._closing
                self._queue.clear()
                self._dropped = 0
            if dropped:
                batch.insert(0, _dropped_line(dropped))
            if batch and not self._print(batch):
                with self._changed:
                    self._broken = True  # what is put later is not queued
                    self._queue.clear()
                return
            if closing:
                return
            with self._changed:  # the next batch after BATCH, or at once when closing
                self._changed.wait_for(lambda: self._closing, timeout=BATCH)

    def _print(self, batch: list[Text]) -> bool:
        """Whether ``batch`` was printed: a terminal gone ends the printing, said by nothing
        (nothing can be)."""
        try:
            self._show(Text("\n").join(batch))
        except Exception:  # noqa: BLE001 - a thread's error would be a traceback on stderr
            return False
        return True


def _dropped_line(count: int) -> Text:
    said = f"offload: {count} log line{'s' if count != 1 else ''} not shown here: the terminal"
    said += " could not keep up (`offload log DRV` prints a build's whole log)"
    return Text(said, style="yellow")
