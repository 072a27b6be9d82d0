"""Renderers driven by a scripted run: three machines, a failure, a machine down, speculation."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import os
import re
import tempfile
import time
from pathlib import Path

import pytest
from rich.cells import cell_len
from typing_extensions import override

from offload.ui import make_renderer
from offload.ui.events import (
    JobLog,
    JobPhase,
    MachineEvent,
    RunFinished,
    RunStarted,
)
from offload.ui.jsonl import JsonRenderer
from offload.ui.plain import (
    PlainRenderer,
    describe_machine,
    machine_warning,
)
from offload.ui.summary import render_summary
from offload.ui.term import sanitize
from offload.ui.tty import TtyRenderer
from tests.helpers.scripted_run import (
    BAD,
    BAD_ERROR,
    BIG,
    HELLO,
    LONG_LINE,
    T0,
    FakeClock,
    done,
    drive,
    scripted_run,
    tty,
    visible,
)

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
    # Stranded with no machine left: as history says it, not "interrupted" (nobody did).
    stranded = RunFinished("r", 1, 1, 0, 2.5, (), T0 + 2.5, interrupted=True, incomplete=True)
    renderer.handle(stranded)
    assert out.getvalue().splitlines()[-1] == (
        "[  2.5s] run: incomplete: 1 built, 1 failed, 0 skipped, 3 left in 2.5s"
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


def test_json_events_that_cannot_be_written_are_said_once_and_the_run_goes_on(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # --json > /dev/full: each flush raised in the loop's callback (nine tracebacks) and the
    # run was stopped half-way.
    with open(os.open("/dev/full", os.O_WRONLY), "w", encoding="utf-8") as full:  # noqa: PTH123
        renderer = JsonRenderer(full, print_logs=False)
        for event in scripted_run():
            renderer.handle(event)
        renderer.close()
        # What it holds goes nowhere now: its close, and the exit's flush, fail no more (the
        # exit said it again, with status 120).
        assert str(Path(f"/proc/self/fd/{full.fileno()}").readlink()) == os.devnull
    said = capsys.readouterr().err
    assert said == (
        "warning: cannot write the --json events: No space left on device; the run goes on "
        "without them\n"
    )


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


def test_tty_logs_above_live_region_sanitised_and_whole() -> None:
    # Whole, as nix-build -L prints them: cut to the width, a compiler's error lost its end.
    renderer, out, clock = tty(print_logs=True, width=60)
    drive(renderer, clock, upto=100)
    lines = visible(out.getvalue()).split("\n")
    assert "hello-2.12> checking for gcc... yes" in lines
    assert "bad-1.0> error: oops done" in lines
    big = [line for line in lines if line.startswith("big-3> ")]
    assert big == [f"big-3> {sanitize(LONG_LINE)}"]
    assert cell_len(big[0]) > 60
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


def test_a_full_builder_is_a_warning_line_as_the_readme_says() -> None:
    # Under --json (events on stdout) a full builder reached stderr not at all.
    event = MachineEvent("b", "full", "every slot there is held by other clients", None, T0)
    assert machine_warning(event) == (
        "warning: builder 'b' is full: every slot there is held by other clients"
    )


@pytest.mark.parametrize(("encoding", "live"), [("utf-8", True), ("ascii", False)])
def test_the_live_view_is_drawn_on_a_utf8_terminal_only(encoding: str, live: bool) -> None:
    # PYTHONIOENCODING=ascii: "…" and "·" came out as \u2026 and \xb7, wider than the view
    # counted, and its redraws piled up in the scrollback. Plain lines instead.
    main, side = os.openpty()
    try:
        with open(side, "w", encoding=encoding, closefd=False) as terminal:
            renderer = make_renderer("auto", stream=terminal, print_logs=False)
            assert isinstance(renderer, TtyRenderer) is live
            assert isinstance(renderer, PlainRenderer) is not live
            with tempfile.TemporaryFile("w+") as file:  # and into a file: plain, never tty
                assert isinstance(
                    make_renderer("auto", stream=file, print_logs=False), PlainRenderer
                )
    finally:
        os.close(main)
        os.close(side)


@pytest.mark.parametrize(
    "mark", ["\u200e", "\u200f", "\u061c", "\u2028", "\u2029", "\u3164", "\uffa0", "\u115f"]
)
def test_marks_that_reorder_break_or_widen_a_line_are_taken_out(mark: str) -> None:
    # Bidirectional marks reorder what a terminal shows; line separators break it; a
    # Hangul filler is one cell to rich and two to the terminal, which broke the redraws.
    assert sanitize(f"a{mark}b") == "ab"


def test_machine_headers_line_up_whatever_the_width_of_their_names() -> None:
    # Padded by characters: "ビルド機" (8 cells, 4 characters) put its header four cells
    # further right than fast's.
    from rich.console import Console

    from offload.ui.view import View

    view = View(T0)
    view.update(RunStarted("r", 2, ("ビルド機", "fast"), 10.0, T0, (1.0, 4.0), (1, 1)))
    out = io.StringIO()
    Console(file=out, width=100, color_system=None).print(view.frame(T0 + 1, 100))
    headers = [line for line in out.getvalue().splitlines() if line.startswith(("ビ", "fast"))]
    assert len(headers) == 2
    starts = {cell_len(line) - cell_len(line[len(line.split()[0]) :].lstrip()) for line in headers}
    assert len(starts) == 1, headers


def test_a_frame_taller_than_the_terminal_keeps_every_header_and_the_progress_line() -> None:
    # 16 builds on fast in a terminal of 10 lines: rich ended the frame in "...", and local's
    # header and the "done · ETA" line were gone.
    from rich.console import Console

    from offload.ui.view import View

    view = View(T0)
    view.update(RunStarted("r", 20, ("fast", "local"), 10.0, T0, (4.0, 1.0), (16, 2)))
    for i in range(16):
        drv = f"/nix/store/{i:032d}-job{i}.drv"
        view.update(JobPhase(drv, f"job{i}", "fast", "building", 1.0, T0 + 0.1))
    out = io.StringIO()
    Console(file=out, width=80, height=10, color_system=None).print(view.frame(T0 + 1, 80, 10))
    lines = out.getvalue().splitlines()
    assert len(lines) <= 9
    assert lines[0].startswith("fast")
    assert any(line.startswith("local") for line in lines)
    assert "+11 more" in out.getvalue()
    assert " done" in lines[-1]


def test_json_events_are_their_fields_as_asdict_gives_them() -> None:
    # event_dict reads each field as it is (asdict's deep copy was a tenth of a trivial run's
    # CPU): every field must stay flat, which this checks over a whole scripted run.
    import dataclasses

    from offload.ui.events import Timing, event_dict

    events = [*scripted_run(), Timing((("imported", 0.1), ("settings", 0.2)), T0)]
    kinds = set()
    for event in events:
        said = event_dict(event)
        kinds.add(said.pop("event"))
        assert said == dataclasses.asdict(event)
    assert {"run_started", "job_phase", "job_log", "job_finished", "run_finished"} <= kinds
