import asyncio
import json
import time

import pytest

from offload.backoff import (
    REASON_CHARS,
    REMEMBERED,
    UNKNOWN_REASON,
    Health,
    change_backoff,
    clear_backoff,
    earlier_failures,
    load_backoff,
    save_backoff,
)
from offload.errors import SchedulerError
from offload.scheduler.run import Executor, PoolMember
from offload.transport.fake import BuildOutcome, FakeBuild, FakeLink, FakeStore
from offload.ui.events import Event, MachineEvent, RunStarted
from tests.helpers.plans import finished, make_plan, spec


def test_backoff_round_trips_and_expired_entries_are_dropped(tmp_path):
    path = tmp_path / "state" / "backoff.json"
    save_backoff(path, {"fast": Health(2, 500.0), "slow": Health(1, 50.0)}, now=0.0)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_backoff(path, now=100.0) == {"fast": Health(2, 500.0)}
    save_backoff(path, {"fast": None}, now=100.0)
    assert load_backoff(path, now=100.0) == {}


def test_a_corrupt_file_means_no_backoff(tmp_path):
    path = tmp_path / "backoff.json"
    path.write_text("{not json")
    assert load_backoff(path, now=0.0) == {}


@pytest.mark.parametrize(
    "entry",
    [
        {"failures": 1, "until": 1e300},  # past any date: every command showing it failed
        {"failures": 1, "until": 100.0 + 2 * 86400},  # years out, for a clock far ahead
        {"failures": 1e300, "until": 500.0},
    ],
)
def test_an_entry_offload_never_writes_means_no_backoff(tmp_path, entry):
    path = tmp_path / "backoff.json"
    path.write_text(json.dumps({"fast": entry, "slow": {"failures": 4, "until": 1720.0}}))
    assert load_backoff(path, now=100.0) == {"slow": Health(4, 1720.0)}


# How to take a builder back that was fixed since (the run itself waits out its backoff).
RESET = "(fixed since? `offload machines --reset fast` tries it from the next run)"


def _run(backoff, dead=False, *, local_builds=True, earlier=None):
    plan, _, _, src = make_plan({"a": [], "b": []})
    local = FakeLink(FakeStore("local", [src]))
    fast = FakeLink(FakeStore("fast"))
    if dead:
        fast.go_down()
    events: list[Event] = []
    members = [PoolMember(spec("fast", speed=10, slots=2), fast, remote=True)]
    if local_builds:  # -j 0 leaves the local machine out of the pool
        members.insert(0, PoolMember(spec("local", speed=1, slots=2), local, remote=False))
    executor = Executor(
        plan,
        members,
        local,
        emit=events.append,
        backoff=backoff,
        earlier_failures=earlier,
        wall=lambda: 1000.0,
    )
    report = asyncio.run(executor.run())
    return report, events, fast


def test_a_builder_backed_off_in_an_earlier_run_is_not_tried():
    report, events, fast = _run({"fast": Health(1, 1060.0)})
    assert report.ok
    assert set(finished(events).values()) == {"local"}
    assert fast.sessions_opened == 0
    down = [e for e in events if isinstance(e, MachineEvent)]
    assert [(e.machine, e.state) for e in down] == [("fast", "down")]
    assert isinstance(events[0], RunStarted)  # the run's first event opens it; the down after
    # Nothing learnt of it: the file keeps what is there (another process may reset it).
    assert "fast" not in report.health


def test_a_builder_an_earlier_run_backed_off_is_tried_when_nothing_else_can_build():
    # -j 0 and the one builder backed off by an earlier run (a fleet since restarted): the
    # run stopped at once on the old reason ("no machine can take them").
    why = "connection refused by 10.0.0.9:22: is sshd running and listening there?"
    report, events, _ = _run({"fast": Health(2, 1060.0, why)}, local_builds=False)
    assert report.ok
    assert set(finished(events).values()) == {"fast"}
    said = [(e.machine, e.state, e.message) for e in events if isinstance(e, MachineEvent)]
    assert said == [
        ("fast", "down", f"backed off after 2 failure(s) in earlier runs: {why} {RESET}"),
        (
            "fast",
            "up",
            "tried again before its backoff ends: no other machine can take the work left",
        ),
    ]
    assert report.health == {"fast": None}  # it built: forgotten


def test_a_builder_tried_again_that_fails_again_stops_the_run_with_its_new_reason():
    with pytest.raises(SchedulerError, match="no machine can take them") as raised:
        _run({"fast": Health(2, 1060.0, "old words")}, dead=True, local_builds=False)
    assert "Connection refused" in str(raised.value)  # this run's reason, not the old one
    assert "old words" not in str(raised.value)


def test_a_run_keeps_only_what_it_learnt_and_others_changes_stand(tmp_path):
    # A run that started with fast backed off and never tried it wrote fast's backoff back
    # at its end, undoing an `offload machines --reset fast` made meanwhile, and wrote every
    # other builder healthy, erasing what the hook had backed off meanwhile.
    path = tmp_path / "backoff.json"
    save_backoff(path, {"fast": Health(1, 1060.0, "refused")}, now=1000.0)
    report, _, _ = _run({"fast": Health(1, 1060.0, "refused")})
    assert report.ok
    clear_backoff(path, ["fast"], now=1000.0)  # meanwhile: offload machines --reset fast
    save_backoff(path, {"slow": Health(1, 1070.0, "the hook's")}, now=1000.0)  # and the hook
    save_backoff(path, report.health, now=1000.0)  # the run ends
    assert set(load_backoff(path, now=1000.0)) == {"slow"}


def test_a_failure_is_remembered_and_a_success_forgets_it():
    report, _, _ = _run({}, dead=True)
    assert report.ok
    health = report.health["fast"]
    assert health is not None
    assert health.failures == 1
    assert health.until > 1000.0
    # Why, as the run said it: the link's error (the fake link's words for a refused port).
    assert health.reason is not None
    assert "Connection refused" in health.reason
    healthy, events, _ = _run({})
    assert set(finished(events).values()) == {"fast"}
    assert healthy.health == {"fast": None}


def test_the_reason_of_an_earlier_run_is_said_and_kept():
    why = "connection refused by 10.0.0.9:22: is sshd running and listening there?"
    report, events, _ = _run({"fast": Health(2, 1060.0, why)})
    [down] = [e for e in events if isinstance(e, MachineEvent)]
    assert down.message == f"backed off after 2 failure(s) in earlier runs: {why} {RESET}"
    assert "fast" not in report.health  # not tried this run: the file still says why


def test_an_entry_without_a_reason_loads_and_says_the_reason_is_unknown(tmp_path):
    # As every offload before reasons were kept wrote it.
    path = tmp_path / "backoff.json"
    path.write_text(json.dumps({"fast": {"failures": 1, "until": 500.0}}))
    [health] = load_backoff(path, now=100.0).values()
    assert health == Health(1, 500.0)
    assert health.why == UNKNOWN_REASON
    report, events, _ = _run({"fast": Health(1, 1060.0)})
    [down] = [e for e in events if isinstance(e, MachineEvent)]
    assert down.message.endswith(f"in earlier runs: {UNKNOWN_REASON} {RESET}")
    assert "fast" not in report.health  # nothing was learned


def test_a_reason_is_kept_on_one_bounded_line(tmp_path):
    path = tmp_path / "backoff.json"
    ssh = "ssh: connect to host b port 22:\n  Connection refused\r\n"
    save_backoff(path, {"a": Health(1, 500.0, ssh), "b": Health(1, 500.0, "x" * 5000)}, 0.0)
    assert len(json.loads(path.read_text())["b"]["reason"]) == REASON_CHARS  # as written
    loaded = load_backoff(path, now=0.0)
    assert loaded["a"].reason == "ssh: connect to host b port 22: Connection refused"
    long = loaded["b"].reason
    assert long is not None
    assert len(long) == REASON_CHARS
    assert long.endswith("...")
    # One written by hand (or by anything else) is bounded as it is read.
    path.write_text(json.dumps({"c": {"failures": 1, "until": 500.0, "reason": "y\n" * 900}}))
    reason = load_backoff(path, now=0.0)["c"].reason
    assert reason is not None
    assert len(reason) == REASON_CHARS
    assert "\n" not in reason


def test_every_backoff_offload_writes_is_within_what_its_reader_keeps() -> None:
    # backoff.py reads an entry further ahead than _MAX_AHEAD as one offload never wrote: the
    # policy's longest backoff must stay inside it, or real backoffs would be dropped.
    from offload.backoff import _MAX_AHEAD
    from offload.scheduler.policy.costs import Backoff

    backoff = Backoff()
    assert backoff.delay(backoff.max_steps) < _MAX_AHEAD


def test_a_backoff_for_a_line_mended_since_is_not_in_force(tmp_path):
    # A builder failed with one line (a wrong pinned host key, say); the line was fixed as the
    # error said: the fix is tried at once, not after the backoff (it was keyed by name only).
    path = tmp_path / "backoff.json"
    failed = Health(1, 2000.0, "HOST KEY CHANGED", connection="old-line", since=1000.0)
    save_backoff(path, {"fast": failed, "slow": Health(1, 2000.0, "refused")}, 1000.0)
    assert load_backoff(path, 1500.0) == {"fast": failed, "slow": Health(1, 2000.0, "refused")}
    assert set(load_backoff(path, 1500.0, {"fast": "old-line"})) == {"fast", "slow"}
    # Mended: not in force; an entry with no line kept, or a machine not in the pool: as was.
    assert set(load_backoff(path, 1500.0, {"fast": "new-line", "slow": "any"})) == {"slow"}
    assert set(load_backoff(path, 1500.0, {})) == {"fast", "slow"}


def test_a_run_said_healthy_keeps_a_backoff_written_after_its_last_build_there(tmp_path):
    # The run built on medium until 1100; offload-hook found it down at 1200 and backed it
    # off. The run, ending at 1300, cleared that backoff: it said medium healthy.
    path = tmp_path / "backoff.json"
    hooks = Health(1, 1260.0, "no answer", connection="line", since=1200.0)
    save_backoff(path, {"medium": hooks, "fast": Health(1, 1260.0, since=1000.0)}, 1200.0)
    save_backoff(
        path, {"medium": None, "fast": None}, 1250.0, healthy_at={"medium": 1100.0, "fast": 1100.0}
    )
    assert load_backoff(path, 1250.0) == {"medium": hooks}  # fast's came before: cleared
    save_backoff(path, {"medium": None}, 1250.0)  # healthy with no time: cleared, as before
    assert load_backoff(path, 1250.0) == {}


def test_a_builder_whose_backoff_ends_during_the_run_is_said_up_when_it_builds_again():
    # Down at the start (an earlier run's backoff, ending a moment in), then given b once it
    # ended: the summary still listed it among the machines down, as nothing said it was up.
    plan, _, _, src = make_plan({"a": [], "b": []})

    async def slow_here(build: FakeBuild) -> BuildOutcome | None:
        await asyncio.sleep(0.5)  # a long build: the local slot stays taken past the backoff
        return None

    local = FakeLink(FakeStore("local", [src], builder=slow_here))
    fast = FakeLink(FakeStore("fast"))
    members = [
        PoolMember(spec("local", speed=1, slots=1), local, remote=False),
        PoolMember(spec("fast", speed=10, slots=1), fast, remote=True),
    ]
    events: list[Event] = []
    now = time.time()
    backoff = {"fast": Health(1, now + 0.2, "refused")}
    executor = Executor(plan, members, local, emit=events.append, backoff=backoff)
    report = asyncio.run(asyncio.wait_for(executor.run(), 10))
    assert report.ok
    said = [(e.machine, e.state, e.message) for e in events if isinstance(e, MachineEvent)]
    assert [(m, s) for m, s, _ in said] == [("fast", "down"), ("fast", "up")], said
    assert said[1][2] == "its backoff ended: it takes work again"
    assert "fast" in finished(events).values()


def test_an_ended_backoff_is_kept_a_day_for_the_next_failure_to_count_from(tmp_path):
    path = tmp_path / "backoff.json"
    save_backoff(path, {"fast": Health(2, 500.0)}, now=0.0)
    assert load_backoff(path, now=1000.0) == {}  # not in force
    assert earlier_failures(path, now=1000.0) == {"fast": 2}
    assert earlier_failures(path, now=400.0) == {"fast": 2}  # in force: for a run told to try
    save_backoff(path, {"slow": Health(1, 2000.0)}, now=1000.0)  # another's change keeps it
    assert earlier_failures(path, now=1000.0) == {"fast": 2, "slow": 1}
    assert earlier_failures(path, now=500.0 + REMEMBERED + 1) == {"slow": 1}  # fast: a day on
    seen: list[Health | None] = []

    def unchanged(health: Health | None) -> Health | None:
        seen.append(health)
        return health

    change_backoff(path, "fast", unchanged, now=1000.0)
    assert seen == [Health(2, 500.0)]  # the hook counts its next failure from it
    assert clear_backoff(path, ["fast", "slow"], now=1000.0) == ["slow"]  # in force
    assert earlier_failures(path, now=1000.0) == {}  # --reset forgets an ended one too


def test_a_builder_failing_after_an_ended_backoff_goes_on_counting():
    report, _, _ = _run({}, dead=True, earlier={"fast": 2})
    health = report.health["fast"]
    assert health is not None
    assert health.failures == 3
    assert 1530.0 < health.until <= 1540.0  # 60 s x 3^2 from the run's wall clock, 1000


def test_a_build_on_a_builder_after_an_ended_backoff_forgets_its_failures():
    report, events, _ = _run({}, earlier={"fast": 3})
    assert "fast" in set(finished(events).values())
    assert report.health == {"fast": None}
