"""Lines printed above the live region by a thread of their own (offload.ui.above): the run's
thread never waits on the terminal, a batch is one print, and a terminal that cannot keep up
loses the oldest lines, said so."""

from __future__ import annotations

import threading

from rich.text import Text

from offload.ui.above import MAX_QUEUED, Above


class _StuckTerminal:
    """A terminal whose first print hangs until ``release``: what is put meanwhile queues."""

    def __init__(self) -> None:
        self.shown: list[str] = []
        self.printing, self.released = threading.Event(), threading.Event()
        self.above = Above(self.show, threaded=True)

    def show(self, text: Text) -> None:
        self.shown.append(text.plain)
        self.printing.set()
        assert self.released.wait(60), "never released"

    def stuck_on(self, first: str) -> None:
        self.above.put(Text(first))
        assert self.printing.wait(60)  # the first batch is being printed, and stays stuck there

    def release(self) -> None:
        self.released.set()
        self.above.close()


def test_lines_put_while_the_terminal_is_stuck_never_wait_and_the_oldest_are_dropped():
    terminal = _StuckTerminal()
    try:
        terminal.stuck_on("line 0")
        for i in range(1, 2 * MAX_QUEUED + 1):  # would hang here if a put waited for it
            terminal.above.put(Text(f"line {i}"))
    finally:
        terminal.release()
    shown = terminal.shown
    assert shown[0] == "line 0"
    # What queued meanwhile is one batch: one print, one redraw.
    assert len(shown) == 2
    lines = shown[1].split("\n")
    assert lines[0].startswith(f"offload: {MAX_QUEUED} log lines not shown here")
    assert "offload log DRV" in lines[0]
    assert lines[1:] == [f"line {i}" for i in range(MAX_QUEUED + 1, 2 * MAX_QUEUED + 1)]


def test_close_prints_what_is_queued_and_ends_the_thread():
    shown: list[str] = []
    before = set(threading.enumerate())
    above = Above(lambda text: shown.append(text.plain), threaded=True)
    (printer,) = set(threading.enumerate()) - before
    for i in range(100):
        above.put(Text(f"line {i}"))
    above.close()
    assert "\n".join(shown).split("\n") == [f"line {i}" for i in range(100)]
    assert not printer.is_alive()


def test_without_a_thread_each_line_is_printed_as_it_comes():
    shown: list[str] = []
    above = Above(lambda text: shown.append(text.plain), threaded=False)
    above.put(Text("a"))
    assert shown == ["a"]
    above.put(Text("b"))
    above.close()
    assert shown == ["a", "b"]


def test_a_warning_is_never_dropped_however_many_log_lines_wait():
    terminal = _StuckTerminal()
    try:
        terminal.stuck_on("first")
        warning = Text("warning: a builder's build could not be stopped")
        terminal.above.put(warning, droppable=False)
        for i in range(MAX_QUEUED + 5):
            terminal.above.put(Text(f"line {i}"))
    finally:
        terminal.release()
    lines = terminal.shown[1].split("\n")
    assert lines[0].startswith("offload: 6 log lines not shown here")
    assert lines[1] == "warning: a builder's build could not be stopped"
    assert lines[2] == "line 6"


def test_a_terminal_that_fails_ends_the_printing_without_a_traceback():
    tried: list[str] = []
    failed: list[BaseException | None] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: failed.append(args.exc_value)

    def show(text: Text) -> None:
        tried.append(text.plain)
        raise OSError(5, "Input/output error")  # the terminal hung up

    try:
        above = Above(show, threaded=True)
        above.put(Text("a"))
        above.close()  # the thread ended by itself: close returns
        above.put(Text("b"))  # nothing queued, nothing raised here
    finally:
        threading.excepthook = previous
    assert tried == ["a"]
    assert failed == []
