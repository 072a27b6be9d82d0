"""scheduler.search: a plan tuned before a run whose estimates are all history's."""

from __future__ import annotations

import itertools
import math

from offload.scheduler.dag import Job
from offload.scheduler.policy import MachineSlotSpec
from offload.scheduler.policy.slack import SLACK_SHARE
from offload.scheduler.search import JOB_PLANS, PLAIN, TRIES, simulate_tuned, tune
from offload.scheduler.simulate import simulate

SYSTEM = "x86_64-linux"
MACHINES = [
    MachineSlotSpec("local", 1.0, 1, frozenset({SYSTEM})),
    MachineSlotSpec("fast", 2.0, 1, frozenset({SYSTEM})),
]


def job(name: str, work: float, *deps: str, features: frozenset[str] = frozenset()) -> Job:
    return Job(name, work, deps, SYSTEM, features)


# A spine a -> c -> d of 21 s of work beside a side job b of 9 s. The plain policy keeps b off
# the slow local machine (its slack is too small a share to spend there) and the spine waits.
SPINE_AND_SIDE = [job("a", 7.0), job("b", 9.0), job("c", 6.0, "a"), job("d", 8.0, "a", "c")]


def test_a_shorter_plan_is_found_and_its_knobs_give_it_again():
    plain = simulate(SPINE_AND_SIDE, MACHINES).makespan
    tuning = tune(SPINE_AND_SIDE, MACHINES, budget=math.inf)
    assert tuning.tuned
    assert tuning.plain == plain
    # The spine on the fast machine end to end (3.5 + 3 + 4 s) while b builds locally.
    assert tuning.planned == 10.5 < plain
    again = simulate(
        SPINE_AND_SIDE, MACHINES, slack_share=tuning.slack_share, weights=tuning.weights
    )
    assert again.makespan == tuning.planned
    assert again.placement()["b"].machine == "local"


def test_nothing_shorter_keeps_the_plain_policy():
    chain = [job("a", 3.0), job("b", 2.0, "a"), job("c", 4.0, "b")]
    tuning = tune(chain, MACHINES, budget=math.inf)
    assert not tuning.tuned
    assert tuning.tries == TRIES  # it did look
    assert (tuning.slack_share, dict(tuning.weights)) == (SLACK_SHARE, {})
    assert tuning.planned == tuning.plain == simulate(chain, MACHINES).makespan


def test_a_gain_under_the_margin_is_not_worth_a_different_plan():
    # The tuned plan is 4 s shorter than the plain plan's 14.5 s: 27.6%.
    assert tune(SPINE_AND_SIDE, MACHINES, budget=math.inf, margin=0.25).tuned
    tuning = tune(SPINE_AND_SIDE, MACHINES, budget=math.inf, margin=0.3)
    assert not tuning.tuned
    assert tuning.planned == tuning.plain == 14.5
    assert (tuning.slack_share, dict(tuning.weights)) == (SLACK_SHARE, {})


def test_one_graph_gets_one_plan_whatever_the_order_of_its_jobs():
    # Three independent jobs and two that wait for two of them: the plain order takes 6.5 s,
    # an order the weights find 6 s.
    jobs = [
        job("j0", 5.0),
        job("j1", 3.0),
        job("j2", 4.0),
        job("j3", 4.0, "j1", "j2"),
        job("j4", 1.0, "j1", "j2"),
    ]
    tunings = [tune(order, MACHINES, budget=math.inf) for order in (jobs, jobs[::-1])]
    assert tunings[0].weights  # the weights won, not a slack share
    assert (tunings[0].plain, tunings[0].planned) == (6.5, 6.0)
    assert tunings[0] == tunings[1]


def test_simulate_tuned_runs_the_kept_plan_or_the_plain_one():
    assert simulate_tuned(SPINE_AND_SIDE, MACHINES, budget=math.inf).makespan == 10.5
    assert simulate_tuned(SPINE_AND_SIDE, MACHINES, search=False).makespan == 14.5
    # The true durations differ from the estimates: the tuned plan meets them as it is.
    actual = {j.id: j.work_estimate for j in SPINE_AND_SIDE} | {"b": 12.0}
    tuned = simulate_tuned(SPINE_AND_SIDE, MACHINES, budget=math.inf, actual=actual)
    assert tuned.makespan == 12.0


def test_the_search_keeps_within_its_budget_and_its_plans():
    ticks = itertools.count()
    # A clock that moves one second per look: a budget of 2.5 s allows two tries after the plain
    # plan (looked at 0, 1, 2; the fourth look, at 3, stops it).
    tuning = tune(SPINE_AND_SIDE, MACHINES, budget=2.5, clock=lambda: float(next(ticks)))
    assert tuning.tries == 2
    assert tune(SPINE_AND_SIDE, MACHINES, budget=0.0).tries == 0
    # The default budget is a share of the plain plan: 14.5 s of plan leaves no time to search
    # under a clock that jumps a minute per look.
    slow = itertools.count(step=60)
    assert tune(SPINE_AND_SIDE, MACHINES, clock=lambda: float(next(slow))).tries == 0
    # A graph too big for the slack shares' four tries and the plain plan is not even planned.
    wide = [job(f"w{i}", 1.0) for i in range(JOB_PLANS // 5 + 1)]
    assert tune(wide, MACHINES, budget=math.inf) is PLAIN
    assert tune(wide[: JOB_PLANS // 5], MACHINES, budget=math.inf).tries == 4


def test_a_graph_no_machine_can_finish_is_left_plain():
    jobs = [job("a", 1.0), job("kvm", 1.0, "a", features=frozenset({"kvm"}))]
    tuning = tune(jobs, MACHINES, budget=math.inf)
    assert (tuning.plain, tuning.tries, tuning.tuned) == (0.0, 0, False)
