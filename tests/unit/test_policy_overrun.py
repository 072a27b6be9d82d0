"""Overrun: guessed builds running past their estimates are copied while other work is ready
(``policy.overrun``), on a fake clock. Every estimate here is a guess of 1 s of work."""

from __future__ import annotations

from offload.scheduler.dag import Job
from offload.scheduler.policy import Decision, MachineSlotSpec, Policy, Speculate, Start, Wait
from offload.scheduler.policy.speculation import SpeculationRule

X86 = frozenset({"x86_64-linux"})
FLEET = [
    MachineSlotSpec("fast", 4.0, 1, X86, frozenset(), frozenset()),
    MachineSlotSpec("slow", 1.0, 1, X86, frozenset(), frozenset()),
]


def job(name: str, *deps: str) -> Job:
    return Job(name, 1.0, tuple(deps), "x86_64-linux", frozenset())


def run_fast_steps(policy: Policy, until: float) -> dict[float, list[Decision]]:
    """Every build on fast ends 0.25 s after it starts (as estimated); slow's never does.
    The decisions of each step, by time."""
    seen = {0.0: policy.next_decisions(0.0)}
    now = 0.0
    while now < until:
        ending = policy.running("fast")
        now += 0.25
        for job_id in ending:
            policy.on_finished(job_id, "fast", now, ok=True)
        seen[now] = policy.next_decisions(now)
    return seen


def test_a_guessed_build_far_past_its_estimate_is_copied_while_others_are_ready() -> None:
    jobs = [job("a"), job("b", "a"), job("c", "b"), *(job(f"s{i:02}") for i in range(24))]
    policy = Policy(jobs, FLEET, guessed=[j.id for j in jobs])
    seen = run_fast_steps(policy, 4.25)
    # s00 is held for fast (it ends there sooner), s01 goes to slow.
    assert starts(seen[0.0]) == [("a", "fast"), ("s01", "slow")]
    # Evidence is 4x its estimate (a copy on fast would also gain the 1 s minimum from 2 s
    # on): the policy asks to be woken then, as nothing else might call it.
    assert Wait(4.000000004) in seen[0.25]
    assert not any(isinstance(d, Speculate) for t, ds in seen.items() if t < 4.25 for d in ds)
    # Done 4.25 s, it is assumed to need as much again: on fast that is 8.5 / 4 s.
    assert seen[4.25] == [Speculate("s01", "fast", 6.375, "slow")]
    assert policy.ready_count > 0  # small builds still waited: the copy went first


def test_a_build_off_the_critical_path_stays_where_it_is() -> None:
    # A chain of 40 guessed builds is ready one after another on fast; s00 runs on slow from
    # the start (no holds). At t its path is 4t on fast's scale, the chain's 40 - 4t.
    jobs = [job("c00"), *(job(f"c{i:02}", f"c{i - 1:02}") for i in range(1, 40)), job("s00")]
    policy = Policy(jobs, FLEET, guessed=[j.id for j in jobs], hold=False)
    seen = run_fast_steps(policy, 5.0)
    assert starts(seen[0.0]) == [("c00", "fast"), ("s00", "slow")]
    # Past 4x its guess from t=4 on, but the chain's path is the longer one until t=5.
    assert starts(seen[4.75]) == [("c19", "fast")]
    assert seen[5.0] == [Speculate("s00", "fast", 7.5, "slow")]


def test_builds_known_from_history_are_left_to_the_idle_tail() -> None:
    jobs = [job("a"), job("b", "a"), job("c", "b"), *(job(f"s{i:02}") for i in range(12))]
    policy = Policy(jobs, FLEET)  # no guesses: estimates from history
    seen = run_fast_steps(policy, 2.5)
    assert not any(isinstance(d, Speculate) for ds in seen.values() for d in ds)


def test_no_copy_when_speculation_is_switched_off() -> None:
    jobs = [job("a"), *(job(f"s{i:02}") for i in range(12))]
    rule = SpeculationRule(min_gain=float("inf"))
    policy = Policy(jobs, FLEET, guessed=[j.id for j in jobs], speculation=rule)
    seen = run_fast_steps(policy, 2.5)
    assert not any(isinstance(d, Speculate) for ds in seen.values() for d in ds)
    assert Wait(2.000000002) not in seen[0.25]  # nothing to wake up for


def starts(decisions: list[Decision]) -> list[tuple[str, str]]:
    return [(d.job, d.machine) for d in decisions if isinstance(d, Start)]
