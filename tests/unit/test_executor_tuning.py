"""The executor tunes its plan (scheduler.search) when history gives every estimate."""

from __future__ import annotations

import asyncio
import math

import pytest

from offload.scheduler.run import Executor, PoolMember
from offload.scheduler.run.plan import plan_jobs
from offload.scheduler.search import PLAIN, tune
from offload.transport.fake import FakeLink, FakeStore
from offload.ui.events import Event
from tests.helpers.plans import finished, make_plan, spec

# tests/unit/test_search.py's spine and side job: the plain plan takes 14.5 s, a tuned one 10.5.
EDGES = {"a": [], "b": [], "c": ["a"], "d": ["a", "c"]}
WORK = {"a": 7.0, "b": 9.0, "c": 6.0, "d": 8.0}


@pytest.fixture(autouse=True)
def no_wall_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """The executor tunes with the default budget, a share of the plan: a loaded machine must
    not cut these tries short."""
    monkeypatch.setattr("offload.scheduler.search.BUDGET_SHARE", math.inf)
    monkeypatch.setattr("offload.scheduler.search.MAX_SECONDS", math.inf)


def executor_for(
    estimates: dict[str, float],
    events: list[Event] | None = None,
    unreachable: dict[str, str] | None = None,
) -> tuple[Executor, list[PoolMember]]:
    plan, _, _, src = make_plan(EDGES)
    local = FakeLink(FakeStore("local", [src]))
    members = [
        PoolMember(spec("local", slots=1), local, remote=False),
        PoolMember(spec("fast", speed=2.0, slots=1), FakeLink(FakeStore("fast")), remote=True),
    ]
    emit = (lambda e: None) if events is None else events.append
    executor = Executor(
        plan, members, local, emit=emit, estimates=estimates, unreachable=unreachable
    )
    return executor, members


def test_a_run_that_history_knows_whole_runs_the_tuned_plan():
    events: list[Event] = []
    executor, members = executor_for(WORK, events)
    tuning = executor.tuning
    assert tuning.tuned
    assert (tuning.plain, tuning.planned) == (14.5, 10.5)
    jobs = plan_jobs(executor.plan, WORK, members[0].spec)
    again = tune(jobs, [m.spec for m in members], budget=math.inf)
    assert (tuning.slack_share, tuning.weights) == (again.slack_share, again.weights)
    assert asyncio.run(executor.run()).ok
    # As the tuned plan has it: b on the local machine, the spine on the fast one (the plain
    # plan holds b for the fast machine).
    assert finished(events) == {"a": "fast", "b": "local", "c": "fast", "d": "fast"}


def test_a_run_with_a_guess_is_not_tuned_to_it():
    executor, _ = executor_for({name: work for name, work in WORK.items() if name != "b"})
    assert executor.tuning is PLAIN
    assert asyncio.run(executor.run()).ok


def test_the_plan_is_tuned_for_the_machines_the_run_starts_with():
    # fast did not answer: the local machine alone builds everything, in one order whatever
    # the knobs, so nothing is kept; the plain plan is that machine's.
    executor, _ = executor_for(WORK, unreachable={"fast": "Connection refused"})
    assert not executor.tuning.tuned
    assert executor.tuning.plain == sum(WORK.values())
    assert executor.tuning.tries > 0
