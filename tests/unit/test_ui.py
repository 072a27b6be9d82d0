"""Renderers driven by a scripted run: three machines, a failure, a machine down, speculation."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import re
import time

import pytest
from rich.cells import cell_len
from rich.console import Console
from typing_extensions import override

from offload.ui import make_renderer
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
from offload.ui.jsonl import JsonRenderer
from offload.ui.plain import (
    PlainRenderer,
    cache_left_out,
    describe_finished,
    describe_machine,
    machine_warning,
)
from offload.ui.summary import on_builder, render_summary, summarize
from offload.ui.term import (
    format_bytes,
    format_duration,
    sanitize,
    sanitize_text,
    truncate,
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


# --- plain -------------------------------------------------------------------------------------


def run_plain(print_logs: bool) -> list[str]:
    out = io.StringIO()
    renderer = PlainRenderer(out, print_logs=print_logs, clock=FakeClock(T0 - 100))
    for event in scripted_run():
        renderer.handle(event)
    renderer.close()
    return out.getvalue().splitlines()


def test_plain_lines_in_order_with_run_relative_times() -> None:
    lines = run_plain(print_logs=False)
    expected_in_order = [
        "[  0.0s] run: 4 to build on fast, slow, local (estimate 20.0s)",
        f"[  0.5s] fast: building '{HELLO}'... (est 4.0s)",
        f"[  1.2s] local: failed bad-1.0 after 1.0s: {BAD_ERROR}",
        "[  1.2s] run: skipped needs-bad: dependency bad-1.0 failed",
        "[  2.0s] slow: lost big-3 after 1.9s: connection reset",
        "[  3.3s] fast: built hello-2.12 in 3.2s",
        f"[  3.5s] fast: building '{BIG}'... (est 3.0s, speculative copy)",
        "[  6.0s] fast: built big-3 in 2.5s",
        "[  7.0s] slow: up: reachable again",
        "[  7.5s] run: finished: 2 built, 1 failed, 1 skipped in 7.5s",
    ]
    positions = [lines.index(line) for line in expected_in_order]
    assert positions == sorted(positions)
    down = time.strftime("%H:%M:%S", time.localtime(T0 + 62.0))
    assert f"[  2.0s] slow: down until {down} (retry in 1m00s): connection reset" in lines
    # one line per event that is not a log line, and nothing else
    assert len(lines) == sum(not isinstance(e, JobLog) for e in scripted_run())
    assert not any("> " in line for line in lines)
    assert all("\x1b" not in line for line in lines)


def test_plain_times_never_go_back_when_a_builder_is_down_before_the_run() -> None:
    # A builder found down while Nix evaluated (4 s): its line comes before the run's.
    out = io.StringIO()
    renderer = PlainRenderer(out, print_logs=False, clock=FakeClock(T0 - 4.7))
    renderer.handle(MachineEvent("slow", "down", "connection refused", T0 + 55.3, T0))
    for event in scripted_run():
        renderer.handle(event)
    times = [float(line[1:6]) for line in out.getvalue().splitlines() if line.startswith("[")]
    assert times == sorted(times)
    assert times[:2] == [4.7, 4.7]  # the down line, then the run's, on one time base


@pytest.mark.parametrize("rich", [False, True], ids=["plain", "rich"])
def test_a_run_with_nothing_to_build_has_no_table_but_its_faults(rich: bool) -> None:
    out = io.StringIO()
    down = MachineEvent("slow", "down", "connection refused", T0 + 60.0, T0)
    render_summary([down], out, rich=rich, width=100)
    text = visible(out.getvalue())
    assert "slow: connection refused" in text
    assert "built" not in text  # no table of zeros
    out = io.StringIO()
    render_summary([down, *scripted_run()], out, rich=rich, width=100)
    assert "built" in visible(out.getvalue())


def test_plain_says_how_many_were_left_when_a_run_ends_early() -> None:
    out = io.StringIO()
    renderer = PlainRenderer(out, print_logs=False, clock=FakeClock(T0))
    renderer.handle(RunStarted("r", 5, ("fast",), 9.0, T0, (4.0,), (2,)))
    renderer.handle(done((BAD, "bad-1.0", "fast"), "failed", (0.0, 1.0), error=BAD_ERROR))
    renderer.handle(RunFinished("r", 1, 1, 0, 1.5, (), T0 + 1.5, interrupted=False))
    assert out.getvalue().splitlines()[-1] == (
        "[  1.5s] run: finished: 1 built, 1 failed, 0 skipped, 3 left in 1.5s"
    )


def test_plain_prints_sanitised_logs_only_when_asked() -> None:
    lines = run_plain(print_logs=True)
    # nix-build's lines, prefixed with the machine and the derivation
    assert "fast: hello-2.12> checking for gcc... yes" in lines
    assert "local: bad-1.0> error: oops done" in lines
    assert f"local: big-3> {LONG_LINE}" in lines  # not a terminal: nothing to truncate to
    assert all(not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", line) for line in lines)
    assert lines.index("fast: hello-2.12> checking for gcc... yes") < lines.index(
        "[  2.0s] slow: lost big-3 after 1.9s: connection reset"
    )


def test_plain_summary_only_when_asked() -> None:
    out = io.StringIO()
    renderer = PlainRenderer(out, print_logs=False, clock=FakeClock(T0), summary=True)
    for event in scripted_run():
        renderer.handle(event)
    assert "machine  built" in out.getvalue()
    assert "bad-1.0 on local" in out.getvalue()
    assert "machine  built" not in "\n".join(run_plain(print_logs=False))


# --- json --------------------------------------------------------------------------------------


class FlushRecorder(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[str] = []

    @override
    def flush(self) -> None:
        self.flushed.append(self.getvalue())


def test_json_events_of_one_loop_step_go_out_in_one_flush_at_its_end() -> None:
    out = FlushRecorder()
    renderer = JsonRenderer(out, print_logs=False)
    first, second, third = [e for e in scripted_run() if not isinstance(e, JobLog)][:3]

    async def run() -> list[str]:
        renderer.handle(first)
        renderer.handle(second)
        during = list(out.flushed)  # nothing yet: the step has not ended
        await asyncio.sleep(0)  # the step ends: the flush due runs before this resumes
        renderer.handle(third)
        await asyncio.sleep(0)
        return during

    assert asyncio.run(run()) == []
    assert len(out.flushed) == 2
    assert out.flushed[0].count("\n") == 2
    assert out.flushed[1] == out.getvalue()
    assert out.getvalue().count("\n") == 3


def plain_json(value: object) -> object:
    return json.loads(json.dumps(value))


@pytest.mark.parametrize("print_logs", [False, True])
def test_json_one_object_per_event_per_line(print_logs: bool) -> None:
    out = FlushRecorder()
    renderer = JsonRenderer(out, print_logs=print_logs)
    events = scripted_run()
    for event in events:
        renderer.handle(event)
        if print_logs or not isinstance(event, JobLog):
            assert out.flushed[-1] == out.getvalue()
            assert out.getvalue().endswith("\n")
    renderer.close()
    lines = out.getvalue().splitlines()
    shown = [e for e in events if print_logs or not isinstance(e, JobLog)]
    assert len(lines) == len(shown)
    for line, event in zip(lines, shown, strict=True):
        record = json.loads(line)
        fields = dataclasses.asdict(event)
        assert record.pop("event")
        assert record == plain_json(fields)
    kinds = [json.loads(line)["event"] for line in lines]
    assert ("job_log" in kinds) is print_logs
    assert kinds[0] == "run_started"
    assert kinds[-1] == "run_finished"
    assert all(line.isascii() for line in lines)


# --- tty ---------------------------------------------------------------------------------------


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


def test_tty_logs_above_live_region_sanitised_and_truncated() -> None:
    renderer, out, clock = tty(print_logs=True, width=60)
    drive(renderer, clock, upto=100)
    lines = visible(out.getvalue()).split("\n")
    assert "hello-2.12> checking for gcc... yes" in lines
    assert "bad-1.0> error: oops done" in lines
    big = [line for line in lines if line.startswith("big-3> ")]
    assert len(big) == 1
    assert cell_len(big[0]) <= 60
    assert big[0].endswith("…")
    assert "\x07" not in out.getvalue()
    assert "title" not in out.getvalue()


UNSTOPPED = "cannot stop process 7 on builder 'slow' (slow): Connection timed out\x1b[2J"


@pytest.mark.parametrize("after_run", [False, True])
def test_a_build_left_running_is_a_warning_line_in_the_live_view(after_run: bool) -> None:
    # The kill fails as a session closes: during the run, or as the run's sessions close
    # after its end (the view is over then, and the line comes after the summary).
    renderer, out, clock = tty(print_logs=False)
    drive(renderer, clock, upto=100 if after_run else 3)
    event = MachineEvent("slow", "unstopped", UNSTOPPED, None, T0 + 8.0)
    renderer.handle(event)
    lines = visible(out.getvalue()).split("\n")
    said = "warning: cannot stop process 7 on builder 'slow' (slow): Connection timed out"
    assert said in lines
    assert "\x1b[2J" not in out.getvalue()
    assert machine_warning(event) == said
    assert describe_machine(event, T0).startswith("not stopped: cannot stop process 7 on")
    assert "\x1b" not in describe_machine(event, T0)  # the plain renderer's line, too


# --- factory -----------------------------------------------------------------------------------


class FakeTerminal(io.StringIO):
    @override
    def isatty(self) -> bool:
        return True


def test_make_renderer_picks_by_kind_and_terminal() -> None:
    assert isinstance(make_renderer("auto", stream=io.StringIO(), print_logs=False), PlainRenderer)
    terminal = FakeTerminal()
    renderer = make_renderer(
        "auto", stream=terminal, print_logs=True, size=(50, 20), clock=FakeClock(T0 + 1)
    )
    assert isinstance(renderer, TtyRenderer)
    renderer.handle(scripted_run()[0])
    renderer.close()
    assert "0/4 done · 1.0s elapsed · ETA 19.0s" in visible(terminal.getvalue())
    assert max(cell_len(line) for line in visible(terminal.getvalue()).split("\n")) <= 50
    out, err = io.StringIO(), io.StringIO()
    json_renderer = make_renderer("json", stream=err, json_stream=out, print_logs=False)
    assert isinstance(json_renderer, JsonRenderer)
    json_renderer.handle(scripted_run()[0])
    assert json.loads(out.getvalue())["event"] == "run_started"
    assert err.getvalue() == ""


# --- summary -----------------------------------------------------------------------------------


def test_summary_totals_from_the_events() -> None:
    events = scripted_run()
    jobs = [e for e in events if isinstance(e, JobFinished)]
    summary = summarize(events)
    assert [m.machine for m in summary.machines] == ["fast", "slow", "local"]
    for row in summary.machines:
        mine = [j for j in jobs if j.machine == row.machine]
        assert row.built == sum(j.status == "built" for j in mine)
        assert row.busy == pytest.approx(sum(j.finished - j.started for j in mine))
        assert row.sent == sum(j.bytes_sent for j in mine)
        assert row.received == sum(j.bytes_received for j in mine)
    fast = summary.machines[0]
    assert (fast.built, fast.failed, fast.stopped) == (2, 0, 0)
    local = summary.machines[2]
    assert (local.built, local.failed, local.stopped) == (0, 1, 1)
    assert summary.total.built == 2
    assert summary.total.busy == pytest.approx(3.2 + 2.5 + 1.9 + 1.0 + 3.9)
    assert summary.total.sent == 1000 + 4096 + 2048
    assert summary.total.received == 5_000_000 + 1024
    assert [j.name for j in summary.failed] == ["bad-1.0"]
    assert [j.name for j in summary.skipped] == ["needs-bad"]


@pytest.mark.parametrize("rich", [False, True])
def test_a_failure_whose_error_names_its_drv_names_it_once(rich: bool) -> None:
    # Nix's "builder for '/nix/store/...-bad-1.0.drv' failed" was followed by the path again.
    nix_said = f"builder for '{BAD}' failed with exit code 3"
    events = scripted_run()
    events = [
        done((BAD, "bad-1.0", "local"), "failed", (0.2, 1.2), error=nix_said)
        if isinstance(e, JobFinished) and e.drv_path == BAD
        else e
        for e in events
    ]
    out = io.StringIO()
    render_summary(events, out, rich=rich, width=300)
    line = next(line for line in out.getvalue().splitlines() if "bad-1.0 on local" in line)
    assert line.count(BAD) == 1, line


@pytest.mark.parametrize("rich", [False, True])
def test_summary_text_lists_machines_totals_and_problems(rich: bool) -> None:
    out = io.StringIO()
    render_summary(scripted_run(), out, rich=rich, width=100)
    text = out.getvalue()
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}
    # machine built fetched failed stopped busy sent received
    assert rows["fast"][1:6] == ["2", "0", "0", "0", "5.7s"]
    assert rows["slow"][1:6] == ["0", "0", "0", "1", "1.9s"]
    assert rows["total"][1:] == ["2", "0", "1", "2", "12.5s", "7.0", "KiB", "4.8", "MiB"]
    assert f"bad-1.0 on local: {BAD_ERROR}" in text
    assert BAD in text
    assert "needs-bad: dependency bad-1.0 failed" in text
    assert "offload log" in text
    assert ("\x1b" in text) is False  # a StringIO is no terminal: no colour codes either way


@pytest.mark.parametrize("width", [20, 40, 60])
def test_a_narrow_terminal_gets_the_summary_table_whole(width: int) -> None:
    # COLUMNS=20 squeezed every column to "…": the table keeps its columns' width (a floor),
    # and the terminal wraps its rows; the lines below it wrap at the terminal's width.
    out = io.StringIO()
    render_summary(scripted_run(), out, rich=True, width=width)
    wide = io.StringIO()
    render_summary(scripted_run(), wide, rich=True, width=100)
    table = [line for line in out.getvalue().splitlines() if line.startswith(" ")]
    assert table == [line for line in wide.getvalue().splitlines() if line.startswith(" ")]
    assert "…" not in "".join(table)
    assert "total         2" in "".join(table)


def test_summary_of_an_empty_run() -> None:
    out = io.StringIO()
    summary = render_summary([], out, rich=False)
    assert summary.total.built == 0
    assert "failed (" not in out.getvalue()


# --- term --------------------------------------------------------------------------------------


def test_sanitize_strips_escapes_and_controls() -> None:
    assert sanitize("\x1b[1;31mred\x1b[0m text") == "red text"
    assert sanitize("\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\") == "link"
    assert sanitize("10%\r50%\r100%") == "100%"
    assert sanitize("a\tb") == "a       b"
    assert sanitize("bell\x07 nul\x00 del\x7f c1\x9b2Jx") == "bell nul del c1x"
    assert sanitize("line\r\n") == "line"
    assert sanitize_text("a\x1b[0m\nb\x07\n") == "a\nb\n"


def test_truncate_counts_cells() -> None:
    assert truncate("short", 10) == "short"
    assert truncate("abcdefghij", 5) == "abcd…"
    wide = truncate("日本語テキスト", 7)
    assert cell_len(wide) <= 7
    assert wide.endswith("…")
    assert truncate("abc", 0) == ""


def test_formats() -> None:
    assert format_duration(2.84) == "2.8s"
    assert format_duration(65) == "1m05s"
    assert format_duration(7380) == "2h03m"
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(5 * 1024**3) == "5.0 GiB"


def test_a_build_is_timed_without_its_wait_and_copies() -> None:
    def built(started: float, finished: float, build_seconds: float | None) -> JobFinished:
        return JobFinished(
            HELLO, "hello-2.12", "fast", "built", started, finished, 0, 0, None, finished,
            build_seconds=build_seconds,
        )  # fmt: skip

    assert describe_finished(built(0.0, 32.4, 2.0)) == (
        "built hello-2.12 in 2.0s (32.4s with waiting and copies)"
    )
    assert describe_finished(built(0.0, 2.2, 2.0)) == "built hello-2.12 in 2.0s"
    assert describe_finished(built(0.0, 3.2, None)) == "built hello-2.12 in 3.2s"


@pytest.mark.parametrize(("machine", "where"), [("fast", " (on fast)"), ("local", "")])
def test_a_cache_left_out_is_placed_one_way_in_the_plain_line_and_the_summary(
    machine: str, where: str
) -> None:
    # Each wrote its own "(on MACHINE)": one helper now says where, for both.
    event = MachineEvent(machine, "cache", "it cannot be reached", None, 0.0, cache="https://c")
    assert on_builder(machine) == where
    assert cache_left_out(event).startswith(f"binary cache 'https://c'{where} is left out: ")
    out = io.StringIO()
    render_summary([event], out, rich=False)
    assert f"https://c{where}: it cannot be reached" in out.getvalue()
