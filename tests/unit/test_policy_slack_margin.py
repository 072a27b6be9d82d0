"""The slack rule's margin: part of an estimated slack may be the error of one huge build."""

from __future__ import annotations

import pytest

from offload.scheduler.dag import Job, JobGraph
from offload.scheduler.policy import MachineSlotSpec, Policy, Start
from offload.scheduler.policy.slack import PATH_NOISE, path_margin

X86 = frozenset({"x86_64-linux"})
POOL = [
    MachineSlotSpec("fast", 4.0, 2, X86),
    MachineSlotSpec("slow", 2.0, 1, X86),
]


def job(name: str, work: float, *deps: str) -> Job:
    return Job(name, work, tuple(deps), "x86_64-linux")


def _side() -> list[Job]:
    # "a" leads to "b": a path of 7 work, 5 shorter than the critical path (12 work).
    return [job("a", 1), job("b", 6, "a")]


def test_the_margin_is_a_share_of_the_heaviest_build_on_the_critical_path() -> None:
    assert path_margin(JobGraph([job("big", 12), *_side()])) == pytest.approx(PATH_NOISE * 12)
    chain = [job("c0", 4), job("c1", 4, "c0"), job("c2", 4, "c1"), *_side()]
    assert path_margin(JobGraph(chain)) == pytest.approx(PATH_NOISE * 4)
    assert path_margin(JobGraph([])) == 0.0


def test_slack_before_one_huge_build_is_not_spent_on_a_slower_machine() -> None:
    # a's slack (5 work) would let it end by 0.5 x (5 + 1) / 4 = 0.75 s; 0.5 s on slow fits.
    # But the critical path is one build of 12: 30% off, it is 3.6 shorter, and so is the
    # slack (room 0.3 s): a takes the free fast slot.
    policy = Policy([job("big", 12), *_side()], POOL)
    assert policy.next_decisions(0.0) == [Start("big", "fast", 3.0), Start("a", "fast", 0.25)]


def test_slack_before_a_chain_of_smaller_builds_still_goes_to_a_slower_machine() -> None:
    # The same 12 work as three builds of 4: the margin is 1.2 and a's room 0.6 s, so slow
    # (0.5 s) still gets it and the second fast slot stays free for the chain.
    chain = [job("c0", 4), job("c1", 4, "c0"), job("c2", 4, "c1"), *_side()]
    policy = Policy(chain, POOL)
    assert policy.next_decisions(0.0) == [Start("c0", "fast", 1.0), Start("a", "slow", 0.5)]
