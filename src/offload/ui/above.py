"""Lines printed above the live region (build logs, warnings), off the run's thread.

Each print above a ``rich.live.Live`` redraws the whole live region below it. Printed one by
one from the run's own thread, a build that prints 20,000 lines (a compiler's, a test
suite's) redrew it 20,000 times while the run waited on the terminal: builds on other machines
started late, and the times history keeps for them grew (a tester: 9 s of CPU against 0.9 s,
a 1 s build kept as 5.8 s, its estimate and its machine's measured speed wrong after it).

So the run's thread only queues a line here, and a thread of their own prints what has queued,
every ``BATCH`` seconds at most, in one print: one redraw a batch, whatever the output's rate.
A terminal slower than the builds' output keeps at most ``MAX_QUEUED`` lines waiting: the
oldest are dropped beyond that, and how many is said in their place (``offload log`` keeps
every line). ``close`` prints what is left and ends the thread, before the live region's last
frame. Without a thread (``threaded=False``: rich's timer off, in tests) each line is printed
as it comes, in order with everything else.
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
        self._queue: deque[Text] = deque()
        self._dropped = 0
        self._closing = False
        self._changed = threading.Condition()
        self._thread = (
            start(threading.Thread(target=self._print, name="offload-log", daemon=True))
            if threaded
            else None
        )

    def put(self, line: Text) -> None:
        if self._thread is None:
            self._show(line)
            return
        with self._changed:
            if len(self._queue) >= MAX_QUEUED:
                self._queue.popleft()
                self._dropped += 1
            self._queue.append(line)
            self._changed.notify()

    def close(self) -> None:
        """Print what is queued, and stop printing (a line put later is not printed)."""
        if self._thread is None:
            return
        with self._changed:
            self._closing = True
            self._changed.notify()
        self._thread.join()

    def _print(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._queue or self._closing)
                batch, dropped, closing = list(self._queue), self._dropped, self._closing
                self._queue.clear()
                self._dropped = 0
            if dropped:
                batch.insert(0, _dropped_line(dropped))
            if batch:
                self._show(Text("\n").join(batch))
            if closing:
                return
            with self._changed:  # the next batch after BATCH, or at once when closing
                self._changed.wait_for(lambda: self._closing, timeout=BATCH)


def _dropped_line(count: int) -> Text:
    said = f"offload: {count} log line{'s' if count != 1 else ''} not shown here: the terminal"
    said += " could not keep up (`offload log DRV` prints a build's whole log)"
    return Text(said, style="yellow")
