"""``--log-format internal-json``'s renderer driven by the scripted run: Nix's ``@nix`` lines,
their activities, results and messages (the real nix-build's lines: test_nix_json_log)."""

from __future__ import annotations

import io
import json
from typing import Any

from offload.ui import make_renderer
from offload.ui.events import Event, JobFinished, JobPhase, MachineEvent, RunFinished, RunStarted
from offload.ui.nixjson import NixJsonRenderer, nix_msg
from tests.helpers.scripted_run import BAD, BIG, HELLO, NEEDS, T0, done, phase, scripted_run


def lines_of(events: list[Event], **options: Any) -> list[dict[str, Any]]:
    out = io.StringIO()
    renderer = NixJsonRenderer(out, **options)
    for event in events:
        renderer.handle(event)
    renderer.close()
    text = out.getvalue()
    assert text.isascii()
    lines = text.splitlines()
    assert all(line.startswith("@nix {") for line in lines), lines
    return [json.loads(line.removeprefix("@nix ")) for line in lines]


def builds(lines: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {x["id"]: x for x in lines if x["action"] == "start" and x["type"] == 105}


def test_each_copy_is_a_build_activity_with_nix_fields_started_once_and_stopped() -> None:
    lines = lines_of(scripted_run())
    started = builds(lines)
    # hello on fast, bad here, big on slow (lost), big here, big's speculative copy on fast
    assert sorted((x["fields"][0], x["fields"][1]) for x in started.values()) == sorted(
        [(HELLO, "fast"), (BAD, ""), (BIG, "slow"), (BIG, ""), (BIG, "fast")]
    )
    for activity in started.values():
        drv, host, round_, rounds = activity["fields"]
        on = f" on '{host}'" if host else ""
        assert activity["text"] == f"building '{drv}'{on}"
        assert (round_, rounds, activity["level"]) == (1, 1, 3)
    stopped = [x["id"] for x in lines if x["action"] == "stop"]
    assert sorted(stopped) == sorted([*started, run_activity(lines)])
    assert len(set(stopped)) == len(stopped)
    assert stopped[-1] == run_activity(lines)  # the run's own, last


def run_activity(lines: list[dict[str, Any]]) -> int:
    (run,) = [x["id"] for x in lines if x["action"] == "start" and x["type"] == 104]
    return int(run)


def test_log_lines_are_results_of_their_copy_as_received_and_not_with_q() -> None:
    lines = lines_of(scripted_run())
    by_id = {x["id"]: (x["fields"][0], x["fields"][1]) for x in builds(lines).values()}
    logs = [(by_id[x["id"]], x["fields"]) for x in lines if x.get("type") == 101]
    assert ((HELLO, "fast"), ["\x1b[32mchecking\x1b[0m for gcc... yes\r\n"]) in logs
    assert [where for where, _ in logs] == [(HELLO, "fast"), (BAD, ""), (BIG, "")]
    assert not [x for x in lines_of(scripted_run(), print_logs=False) if x.get("type") == 101]


def test_progress_counts_done_expected_running_failed() -> None:
    lines = lines_of(scripted_run())
    run = run_activity(lines)
    progress = [x["fields"] for x in lines if x["action"] == "result" and x["id"] == run]
    assert progress[0] == [0, 4, 0, 0]
    assert [0, 4, 2, 0] in progress  # bad here and hello on fast
    assert progress[-1] == [2, 4, 0, 1]  # hello and big built, bad failed
    assert all(f[1] == 4 and f[2] >= 0 for f in progress)


def test_messages_follow_nix_levels_and_verbosity() -> None:
    default = [(x["level"], x["msg"]) for x in lines_of(scripted_run()) if x["action"] == "msg"]
    assert (
        0,
        "error: build of '" + BAD + "' failed: builder for 'bad-1.0' failed with exit code 1",
    ) in default
    assert any(
        level == 1 and msg.startswith("warning: builder 'slow' is down") for level, msg in default
    )
    assert (1, "warning: skipped needs-bad: dependency bad-1.0 failed") in default
    assert all(level <= 3 for level, _ in default)
    assert not any("built hello" in msg for _, msg in default)
    verbose = [
        (x["level"], x["msg"])
        for x in lines_of(scripted_run(), verbosity=4)
        if x["action"] == "msg"
    ]
    assert (4, "built hello-2.12 in 3.2s") in verbose
    assert (4, "slow: up: reachable again") in verbose
    quiet = [x for x in lines_of(scripted_run(), verbosity=0) if x["action"] == "msg"]
    assert {x["level"] for x in quiet} == {0}


def test_a_failure_in_nix_words_is_said_as_nix_says_it() -> None:
    error = f"builder for '{BAD}' failed with exit code 3;\nlast 10 log lines:\n> oops"
    events: list[Event] = [
        RunStarted("r", 1, ("fast",), 1.0, T0),
        phase((BAD, "bad-1.0", "fast"), "building", 0.1, 1.0),
        done((BAD, "bad-1.0", "fast"), "failed", (0.1, 0.5), error=error),
        RunFinished("r", 0, 1, 0, 0.5, (), T0 + 0.5),
    ]
    (failure,) = [x for x in lines_of(events) if x["action"] == "msg" and x["level"] == 0]
    assert failure["msg"] == f"error: {error}"


def test_nothing_to_build_opens_no_activity() -> None:
    events: list[Event] = [
        RunStarted("r", 0, ("fast",), 0.0, T0),
        JobFinished(NEEDS, "needs-bad", "", "substituted", T0, T0, 0, 0, None, T0),
        RunFinished("r", 0, 0, 0, 0.1, (), T0 + 0.1),
    ]
    assert [x for x in lines_of(events) if x["action"] in ("start", "stop")] == []


def test_a_machine_down_before_the_run_is_a_warning() -> None:
    events: list[Event] = [MachineEvent("slow", "down", "connection refused", T0 + 60, T0)]
    (line,) = lines_of(events)
    assert line == {
        "action": "msg",
        "level": 1,
        "msg": "warning: builder 'slow' is down: connection refused",
    }


def test_nix_lines_become_msgs_at_their_level() -> None:
    def parsed(line: str) -> dict[str, Any]:
        assert nix_msg(line).startswith("@nix ")
        return dict(json.loads(nix_msg(line).removeprefix("@nix ")))

    # Nix 2.8's own for a trace (nix-instantiate --log-format internal-json): level 0.
    assert parsed("trace: tracing") == {"action": "msg", "level": 0, "msg": "trace: tracing"}
    assert parsed("\x1b[35;1mwarning:\x1b[0m x")["level"] == 1
    assert parsed("error: x")["level"] == 0
    assert parsed("building '/nix/store/x.drv'...")["level"] == 3


def test_make_renderer_gives_it_for_nixjson() -> None:
    out = io.StringIO()
    renderer = make_renderer("nixjson", stream=out, print_logs=True, verbosity=0)
    renderer.handle(RunStarted("r", 1, ("fast",), 1.0, T0))
    assert isinstance(renderer, NixJsonRenderer)
    assert "offload: 1 to build" not in out.getvalue()  # an info msg, above verbosity 0
    assert '"type":104' in out.getvalue()


def test_a_line_after_a_copy_ended_starts_no_activity() -> None:
    # A copy said lost as its machine fell may still have a line on its way: it started an
    # actBuild again, which nothing stopped (nom showed it running for ever).
    from offload.ui.events import JobLog

    events: list[Event] = [
        RunStarted("r", 1, ("fast",), 1.0, T0),
        phase((BAD, "bad-1.0", "fast"), "building", 0.1, 1.0),
        done((BAD, "bad-1.0", "fast"), "lost", (0.1, 0.5), error="connection lost"),
        JobLog(BAD, "bad-1.0", "fast", "a last line", T0 + 0.6),
        JobPhase(BAD, "bad-1.0", "fast", "building", 1.0, T0 + 0.6, step="installPhase"),
        RunFinished("r", 0, 0, 0, 0.7, (), T0 + 0.7),
    ]
    lines = lines_of(events)
    starts = [x["id"] for x in lines if x["action"] == "start"]
    assert sorted(starts) == sorted(x["id"] for x in lines if x["action"] == "stop")
    assert not [x for x in lines if x.get("type") in (101, 104) and x["action"] == "result"]


def test_a_derivation_built_again_is_done_once() -> None:
    # Its outputs lost with their builder, built again elsewhere: the progress ended at 3 done
    # of 2 expected.
    events: list[Event] = [
        RunStarted("r", 2, ("a", "b"), 1.0, T0),
        phase((HELLO, "hello-2.12", "a"), "building", 0.1, 1.0),
        done((HELLO, "hello-2.12", "a"), "built", (0.1, 0.5)),
        phase((HELLO, "hello-2.12", "b"), "building", 0.6, 1.0),
        done((HELLO, "hello-2.12", "b"), "built", (0.6, 0.9)),
        phase((BIG, "big-3", "b"), "building", 1.0, 1.0),
        done((BIG, "big-3", "b"), "built", (1.0, 1.5)),
        RunFinished("r", 2, 0, 0, 1.6, (), T0 + 1.6),
    ]
    lines = lines_of(events)
    progress = [x["fields"] for x in lines if x["action"] == "result" and x["type"] == 105]
    assert progress[-1] == [2, 2, 0, 0]
