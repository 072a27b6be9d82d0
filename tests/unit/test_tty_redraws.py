"""The live view's redraws (``ui.tty``): an event asks for one, at most every ``MIN_REDRAW``
seconds while rich's own timer runs."""

from __future__ import annotations

import io
import itertools
import time

import pytest
from rich.console import Console

from offload.ui.events import JobPhase, RunStarted
from offload.ui.tty import MIN_REDRAW, TtyRenderer


def _drawn(monkeypatch: pytest.MonkeyPatch, *, timed: bool) -> list[float]:
    """When the view was redrawn for 500 builds' starts, one right after another."""
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    renderer = TtyRenderer(console, print_logs=False, auto_refresh=timed)
    drawn: list[float] = []
    renderer.handle(RunStarted("r", 500, ("fast",), 9.0, time.time(), (4.0,), (2,)))
    monkeypatch.setattr(renderer._live, "refresh", lambda: drawn.append(time.monotonic()))
    try:
        for i in range(500):
            name = f"/nix/store/{i:032d}-x{i}.drv"
            renderer.handle(JobPhase(name, f"x{i}", "fast", "building", 1.0, time.time()))
    finally:
        monkeypatch.undo()
        renderer.close()
    return drawn


def test_a_flood_of_events_is_drawn_a_few_times_not_once_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 2,000 builds of 0.02 s redrew the view 6,000 times (350 a second): half the run's CPU.
    # Rich's timer draws what came since the last redraw.
    drawn = _drawn(monkeypatch, timed=True)
    assert len(drawn) < 50
    assert all(b - a >= MIN_REDRAW for a, b in itertools.pairwise(drawn))
    # Without the timer, nothing else would draw the last: each is.
    assert len(_drawn(monkeypatch, timed=False)) == 500
