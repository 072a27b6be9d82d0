"""A scripted run for the renderers' tests: three machines, a failure, a machine down,
speculation; its events as offload's executor would emit them."""

from __future__ import annotations

import io
import re

from rich.console import Console

from offload.ui.events import (
    Event,
    JobFinished,
    JobLog,
    JobPhase,
    JobStatus,
    MachineEvent,
    Phase,
    RunFinished,
    RunStarted,
)
from offload.ui.tty import TtyRenderer

T0 = 1_700_000_000.0
HELLO = "/nix/store/0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a-hello-2.12.drv"
BAD = "/nix/store/1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b-bad-1.0.drv"
NEEDS = "/nix/store/2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c-needs-bad.drv"
BIG = "/nix/store/3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d-big-3.drv"
LONG_LINE = "compiling " + "x" * 290
BAD_ERROR = "builder for 'bad-1.0' failed with exit code 1"


def phase(
    job: tuple[str, str, str], ph: Phase, at: float, est: float, *, spec: bool = False
) -> JobPhase:
    drv, name, machine = job
    return JobPhase(drv, name, machine, ph, est, T0 + at, speculative=spec)


def log(drv: str, name: str, machine: str, line: str, at: float) -> JobLog:
    return JobLog(drv, name, machine, line, T0 + at)


def done(
    job: tuple[str, str, str],
    status: JobStatus,
    span: tuple[float, float],
    moved: tuple[int, int] = (0, 0),
    error: str | None = None,
) -> JobFinished:
    drv, name, machine = job
    start, end = span
    return JobFinished(drv, name, machine, status, T0 + start, T0 + end, *moved, error, T0 + end)


def scripted_run() -> list[Event]:
    return [
        RunStarted("run1", 4, ("fast", "slow", "local"), 20.0, T0, (4.0, 1.0, 1.0), (2, 2, 4)),
        phase((HELLO, "hello-2.12", "fast"), "connecting", 0.1, 4.0),
        phase((BIG, "big-3", "slow"), "connecting", 0.1, 12.0),
        phase((BAD, "bad-1.0", "local"), "building", 0.2, 2.0),
        phase((HELLO, "hello-2.12", "fast"), "sending", 0.3, 4.0),
        phase((HELLO, "hello-2.12", "fast"), "building", 0.5, 4.0),
        log(HELLO, "hello-2.12", "fast", "\x1b[32mchecking\x1b[0m for gcc... yes\r\n", 0.6),
        phase((BIG, "big-3", "slow"), "building", 1.0, 12.0),
        log(BAD, "bad-1.0", "local", "error: oops\a\x07 \x1b]0;title\x07done", 1.1),
        done((BAD, "bad-1.0", "local"), "failed", (0.2, 1.2), error=BAD_ERROR),
        done((NEEDS, "needs-bad", ""), "skipped", (1.2, 1.2), error="dependency bad-1.0 failed"),
        MachineEvent("slow", "down", "connection reset", T0 + 62.0, T0 + 2.0),
        done((BIG, "big-3", "slow"), "lost", (0.1, 2.0), (2048, 0), "connection reset"),
        phase((BIG, "big-3", "local"), "building", 2.1, 10.0),
        log(BIG, "big-3", "local", LONG_LINE, 2.2),
        phase((HELLO, "hello-2.12", "fast"), "fetching", 3.0, 4.0),
        done((HELLO, "hello-2.12", "fast"), "built", (0.1, 3.3), (1000, 5_000_000)),
        phase((BIG, "big-3", "fast"), "building", 3.5, 3.0, spec=True),
        done((BIG, "big-3", "fast"), "built", (3.5, 6.0), (4096, 1024)),
        done((BIG, "big-3", "local"), "cancelled", (2.1, 6.0), error="another copy finished first"),
        MachineEvent("slow", "up", "reachable again", None, T0 + 7.0),
        RunFinished("run1", 2, 1, 1, 7.5, ("/nix/store/x-hello-2.12",), T0 + 7.5),
    ]


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


_ESC = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def visible(text: str) -> str:
    """What a person would read: the test's own stripping of rich's cursor and style codes."""
    return _ESC.sub("", text).replace("\r", "\n")


def tty(print_logs: bool, width: int = 100) -> tuple[TtyRenderer, io.StringIO, FakeClock]:
    out = io.StringIO()
    console = Console(file=out, width=width, height=40, force_terminal=True, color_system=None)
    clock = FakeClock(T0)
    renderer = TtyRenderer(console, print_logs=print_logs, clock=clock, auto_refresh=False)
    return renderer, out, clock


def drive(renderer: TtyRenderer, clock: FakeClock, upto: float) -> None:
    """Feed the events up to ``upto`` seconds into the run, the clock following them."""
    for event in scripted_run():
        if event.time - T0 <= upto:
            clock.now = max(clock.now, event.time)
            renderer.handle(event)


def last_frame(out: io.StringIO) -> list[str]:
    """The machine lines and the overall line of the newest frame drawn."""
    lines = [line.rstrip() for line in visible(out.getvalue()).split("\n") if line.strip()]
    overall = [i for i, line in enumerate(lines) if " done" in line]
    start = overall[-2] + 1 if len(overall) > 1 else 0
    return lines[start : overall[-1] + 1]
