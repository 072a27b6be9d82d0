"""The run summary and the terminal's formatting helpers, over the scripted run."""

from __future__ import annotations

import dataclasses
import io

import pytest
from rich.cells import cell_len

from offload.ui.events import (
    Event,
    JobFinished,
    JobPhase,
    MachineEvent,
)
from offload.ui.plain import (
    cache_left_out,
    describe_finished,
)
from offload.ui.summary import on_builder, render_summary, summarize
from offload.ui.term import (
    format_bytes,
    format_duration,
    sanitize,
    sanitize_text,
    truncate,
)
from tests.helpers.scripted_run import (
    BAD,
    BAD_ERROR,
    HELLO,
    done,
    scripted_run,
)


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


def test_a_copy_that_only_waited_there_is_not_stopped_there() -> None:
    # Moved off a full builder before it started, it showed as stopped there (team tester:
    # "stopped 3" where one copy had run).
    moved = dataclasses.replace(
        done((HELLO, "hello-2.12", "fast"), "cancelled", (0.1, 2.1)), waited=2.0
    )
    ran = dataclasses.replace(
        done((HELLO, "hello-2.12", "slow"), "cancelled", (0.1, 2.1)), waited=0.5
    )
    lost = dataclasses.replace(done((BAD, "bad-1.0", "fast"), "lost", (0.1, 1.1)), waited=1.0)
    summary = summarize([*scripted_run()[:1], moved, ran, lost])
    rows = {row.machine: row for row in summary.machines}
    assert (rows["fast"].stopped, rows["slow"].stopped) == (0, 1)
    assert rows["fast"].busy == 0.0


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


def test_a_machine_that_came_back_is_still_said_with_when() -> None:
    # A builder slow to answer that joined later, or one backed off and tried again: an "up"
    # took it off "machines down", so the summary said nothing of a fault the run had.
    slow = MachineEvent("fast", "slow", "still connecting", None, 10.0)
    down = MachineEvent("medium", "down", "connection refused by medium", 70.0, 10.0)
    gone = MachineEvent("slow", "down", "its disk is full", 90.0, 10.0)
    events = [down, slow, gone]
    events += [MachineEvent("fast", "up", "answered", None, 12.0)]
    events += [MachineEvent("medium", "up", "tried again", None, 75.0)]
    out = io.StringIO()
    render_summary(events, out, rich=False)
    text = out.getvalue()
    # Not under "machines down": it was slow, then built (a tester read it as down).
    assert "machines slow to answer (1):\n  fast: at the start; it answered at " in text
    assert "machines down (2):\n  medium: " in text
    assert text.count("machines down") == 1  # each heading once, whatever the events' order
    assert "medium: connection refused by medium; up again at " in text
    assert "slow: its disk is full\n" in text
    # One that never answered is said with where to find why.
    out = io.StringIO()
    render_summary(
        [MachineEvent("silent", "slow", "still connecting", None, 10.0)], out, rich=False
    )
    said = "silent: did not answer during the run (`offload doctor silent` says why)"
    assert said in out.getvalue()


@pytest.mark.parametrize("machine", ["[fd00::5]:2222", "gpu[/]", "[bold]x"])
def test_a_machine_name_is_shown_as_written_not_read_as_markup(machine: str) -> None:
    # "[fd00::5]:2222" showed as ":2222"; "gpu[/]" raised MarkupError after a successful
    # build, before its result links were made.
    out = io.StringIO()
    render_summary([done((HELLO, "hello-2.12", machine), "built", (0.0, 1.0))], out, rich=True)
    assert machine in out.getvalue()


def test_a_builder_slow_to_stop_its_builds_at_the_end_was_not_down() -> None:
    # It answered (late, or at once) and built; stopping its builds after a Ctrl-C took long:
    # that "slow" put it under "machines down: did not answer during the run" (a review).
    stopping = "its builds are being stopped: it has not answered yet"
    events: list[Event] = [
        MachineEvent("fast", "slow", "still connecting", None, 10.0),
        MachineEvent("fast", "up", "answered", None, 12.0),
        JobPhase(HELLO, "hello-2.12", "medium", "building", 4.0, 13.0),
    ]
    events += [MachineEvent(m, "slow", stopping, None, 20.0) for m in ("fast", "medium")]
    out = io.StringIO()
    render_summary(events, out, rich=False)
    text = out.getvalue()
    assert "machines down" not in text
    assert "machines slow to answer (1):\n  fast: at the start; it answered at " in text
    assert "medium" not in text
