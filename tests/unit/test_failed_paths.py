"""After a failure, critical paths no longer count the jobs it skipped (issue #18).

``JobGraph.mark_failed`` shortens the paths of the skipped jobs' ancestors, and the policy
orders its ready, coming and running jobs by the new values.
"""

from __future__ import annotations

import random

import pytest

from offload.scheduler.dag import Job, JobGraph, JobState
from offload.scheduler.policy import MachineSlotSpec, Policy, Start
from offload.scheduler.policy.ranked import Ranked
from offload.scheduler.policy.slack import remaining_path

X86 = frozenset({"x86_64-linux"})


def job(name: str, work: float, *deps: str) -> Job:
    return Job(name, work, tuple(deps), "x86_64-linux")


def _random_jobs(seed: int, n: int = 60) -> list[Job]:
    rng = random.Random(seed)  # noqa: S311 -- reproducible test input
    jobs: list[Job] = []
    for i in range(n):
        picks = {f"j{rng.randrange(i)}" for _ in range(rng.randint(0, 3))} if i else set()
        jobs.append(Job(f"j{i}", round(rng.uniform(0.5, 9), 2), tuple(sorted(picks))))
    return jobs


def _paths_without(jobs: list[Job], dead: set[str]) -> dict[str, float]:
    """Each live job's critical path in the graph with the dead jobs left out."""
    live = [Job(j.id, j.work_estimate, tuple(d for d in j.deps if d not in dead)) for j in jobs]
    fresh = JobGraph(j for j in live if j.id not in dead)
    return {j.id: fresh.critical_path(j.id) for j in live if j.id not in dead}


@pytest.mark.parametrize("seed", range(8))
def test_paths_after_failures_equal_rebuilding_without_the_skipped_jobs(seed: int) -> None:
    jobs = _random_jobs(seed)
    g = JobGraph(jobs)
    rng = random.Random(seed + 50)  # noqa: S311 -- reproducible test input
    dead: set[str] = set()
    for _ in range(4):
        live = [j.id for j in jobs if j.id not in dead]
        before = {j: g.critical_path(j) for j in live}
        failed = rng.choice(live)
        dead |= {failed, *g.mark_failed(failed)}
        expected = _paths_without(jobs, dead)
        for job_id, path in expected.items():
            assert g.critical_path(job_id) == pytest.approx(path)
        assert set(g.paths_changed) == {j for j, p in expected.items() if p != before[j]}
        assert all(g.critical_path(j) == 0.0 for j in dead)
        assert g.graph_critical_path() == pytest.approx(max(expected.values(), default=0.0))


def test_only_ancestors_of_skipped_jobs_change() -> None:
    # a -> s <- f ; b -> s ; c -> d (independent). f fails, s is skipped.
    jobs = [job("a", 1), job("b", 2), job("f", 3), job("s", 50, "a", "b", "f"), job("c", 4)]
    g = JobGraph([*jobs, job("d", 5, "c")])
    assert g.mark_failed("f") == ["s"]
    assert sorted(g.paths_changed) == ["a", "b"]
    assert (g.critical_path("a"), g.critical_path("b")) == (1.0, 2.0)
    assert (g.critical_path("c"), g.critical_path("d")) == (9.0, 5.0)
    # A skipped job's estimate no longer reaches its ancestors.
    assert g.update_estimate("s", 500) == []
    assert g.critical_path("a") == 1.0
    assert g.state("s") is JobState.SKIPPED


def test_a_failed_leaf_shortens_its_ancestors_paths_too() -> None:
    # a's longest path went through f (1 + 9), which fails with nothing to skip: now via b.
    g = JobGraph([job("a", 1), job("f", 9, "a"), job("b", 7, "a")])
    g.mark_started("a")
    g.mark_done("a")
    g.mark_started("f")
    assert g.mark_failed("f") == []
    assert g.paths_changed == ["a"]
    assert g.critical_path("a") == 8.0


def test_the_policy_takes_the_other_branch_once_the_long_one_is_skipped() -> None:
    # f fails; the long build s needed both f and a, so a's long path is gone with s, and
    # the chain b -> c is now the more critical work for the one slot.
    jobs = [
        job("f", 2),
        job("a", 1),
        job("s", 100, "f", "a"),
        job("b", 5),
        job("c", 5, "b"),
    ]
    policy = Policy(jobs, [MachineSlotSpec("m", 1.0, 1, X86)])
    assert policy.next_decisions(0.0) == [Start("f", "m", 2.0)]
    assert policy.on_finished("f", "m", 2.0, ok=False).skipped == ("s",)
    assert policy.next_decisions(2.0) == [Start("b", "m", 7.0)]
    policy.on_finished("b", "m", 7.0, ok=True)
    assert policy.next_decisions(7.0) == [Start("c", "m", 12.0)]


def test_a_running_job_no_longer_keeps_the_skipped_path_as_the_remaining_one() -> None:
    # r runs while f fails: r's path (3 + 100) went through the skipped s.
    jobs = [job("r", 3), job("f", 2), job("s", 100, "r", "f")]
    policy = Policy(jobs, [MachineSlotSpec("m", 1.0, 2, X86)], speculation=None)
    started = {d.job for d in policy.next_decisions(0.0) if isinstance(d, Start)}
    assert started == {"r", "f"}
    assert remaining_path(policy._by_path, policy._runs, 1.0, 0.0) == 102.0
    policy.on_finished("f", "m", 1.0, ok=False)
    assert remaining_path(policy._by_path, policy._runs, 1.0, 0.0) == 2.0


def test_unschedulable_jobs_shorten_paths_before_the_first_decision() -> None:
    # "gpu" needs a feature no machine has: s is skipped at the start, so a's path is 1.
    jobs = [
        Job("gpu", 1, (), "x86_64-linux", frozenset({"cuda"})),
        job("a", 1),
        job("s", 100, "gpu", "a"),
        job("b", 5),
    ]
    policy = Policy(jobs, [MachineSlotSpec("m", 1.0, 1, X86)], strict=False)
    assert policy.skipped_at_start == ["s"]
    assert policy.next_decisions(0.0) == [Start("b", "m", 5.0)]


def test_rerank_moves_a_held_copy_and_ignores_others() -> None:
    ranked = Ranked()
    for key in ((-9.0, 1, "a"), (-5.0, 2, "b"), (-1.0, 3, "c")):
        ranked.add(key)
    ranked.rerank(1, -2.0)
    ranked.rerank(7, -100.0)  # not held
    assert ranked.entries == [(-5.0, 2, "b"), (-2.0, 1, "a"), (-1.0, 3, "c")]
    ranked.discard(1)
    assert ranked.entries == [(-5.0, 2, "b"), (-1.0, 3, "c")]
