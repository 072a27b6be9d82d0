"""JobGraph: states, readiness, failure propagation, critical paths, cycles."""

from __future__ import annotations

import itertools
import random

import pytest

import offload.scheduler.dag as dag_module
from offload.errors import SchedulerError
from offload.scheduler.dag import Job, JobGraph, JobState
from offload.scheduler.policy import MachineSlotSpec
from offload.scheduler.simulate import simulate

X = frozenset({"x"})


def job(name: str, work: float = 1.0, *deps: str) -> Job:
    return Job(name, work, tuple(deps))


def diamond() -> JobGraph:
    # a -> b, a -> c, (b, c) -> d ; e independent
    return JobGraph(
        [job("a", 1), job("b", 2, "a"), job("c", 5, "a"), job("d", 1, "b", "c"), job("e", 3)]
    )


def test_ready_set_follows_dependencies() -> None:
    g = diamond()
    assert sorted(g.ready()) == ["a", "e"]
    g.mark_started("a")
    assert sorted(g.ready()) == ["e"]
    assert sorted(g.mark_done("a")) == ["b", "c"]
    g.mark_started("b")
    assert g.mark_done("b") == []  # d still waits for c
    assert g.state("d") is JobState.PENDING
    g.mark_started("c")
    assert g.mark_done("c") == ["d"]
    assert g.state("d") is JobState.READY


def test_counts_and_finished() -> None:
    g = diamond()
    assert g.count(JobState.READY) == 2
    assert g.count(JobState.PENDING) == 3
    for name in g.topological_order():
        g.mark_started(name)
        g.mark_done(name)
    assert g.finished
    assert g.count(JobState.DONE) == 5


def test_failure_skips_transitive_dependents_only() -> None:
    g = JobGraph(
        [
            job("root"),
            job("mid", 1, "root"),
            job("leaf", 1, "mid"),
            job("also", 1, "root", "other"),
            job("other"),
            job("free"),
            job("after_other", 1, "other"),
        ]
    )
    g.mark_started("root")
    assert sorted(g.mark_failed("root")) == ["also", "leaf", "mid"]
    assert g.state("root") is JobState.FAILED
    for name in ("mid", "leaf", "also"):
        assert g.state(name) is JobState.SKIPPED
    # Independent work goes on; finishing another dep of a skipped job never revives it.
    g.mark_started("other")
    assert g.mark_done("other") == ["after_other"]
    assert g.state("also") is JobState.SKIPPED
    assert g.state("free") is JobState.READY
    g.mark_started("free")
    g.mark_done("free")
    g.mark_started("after_other")
    g.mark_done("after_other")
    assert g.finished


def test_job_skipped_once_through_two_failed_deps() -> None:
    g = JobGraph([job("x"), job("y"), job("z", 1, "x", "y"), job("w", 1, "z")])
    assert g.mark_failed("x") == ["z", "w"]
    assert g.mark_failed("y") == []
    assert g.count(JobState.SKIPPED) == 2


def test_returned_job_is_ready_again() -> None:
    g = diamond()
    g.mark_started("e")
    g.mark_returned("e")
    assert g.state("e") is JobState.READY
    with pytest.raises(SchedulerError, match="it is ready"):
        g.mark_returned("e")
    with pytest.raises(SchedulerError, match="no such job"):
        g.mark_started("nope")
    with pytest.raises(SchedulerError, match="it is pending"):
        g.mark_started("d")


def test_unknown_dependency_and_duplicates_are_errors() -> None:
    with pytest.raises(SchedulerError, match=r"'b'.*not in the graph"):
        JobGraph([job("a", 1, "b")])
    with pytest.raises(SchedulerError, match="twice"):
        JobGraph([job("a"), job("a")])


def test_a_dependency_named_twice_is_one_dependency_everywhere() -> None:
    # The graph counted it once and the policy's count of unstarted dependencies twice: the
    # job never became "coming", so it never claimed a slot ahead of less critical work.
    ms = [MachineSlotSpec("fast", 4.0, 2, X), MachineSlotSpec("slow", 1.0, 1, X)]
    schedules = []
    for deps in (("a",), ("a", "a")):
        jobs = [Job("a", 4, (), "x"), Job("b", 40, deps, "x"), Job("s1", 8, (), "x"),
                Job("s2", 8, (), "x")]  # fmt: skip
        assert JobGraph(jobs).job("b").deps == ("a",)
        schedules.append(simulate(jobs, ms).schedule)
    assert schedules[0] == schedules[1]


def test_the_first_bad_job_in_order_is_the_one_named() -> None:
    with pytest.raises(
        SchedulerError, match=r"job .b.: its work estimate must be a finite number >= 0, not -1"
    ):
        JobGraph([job("a"), job("b", -1), job("c", -2), job("a")])
    with pytest.raises(SchedulerError, match="job 'a' appears twice"):
        JobGraph([job("a"), job("b"), job("a"), job("c", -2)])
    # A NaN estimate is refused too (it was taken, as no comparison with it holds).
    with pytest.raises(SchedulerError, match=r"job 'a': .* not nan"):
        JobGraph([job("a", float("nan")), job("b"), job("c", -2)])
    assert JobGraph([job("a", 0), job("b", 2, "a")]).work("b") == 2


def test_cycle_is_reported_with_its_members() -> None:
    jobs = [job("ok"), job("p", 1, "r", "ok"), job("q", 1, "p"), job("r", 1, "q"), job("s", 1, "r")]
    with pytest.raises(SchedulerError, match="dependency cycle") as info:
        JobGraph(jobs)
    cycle = info.value.message.removeprefix("dependency cycle: ").split(" -> ")
    assert cycle[0] == cycle[-1]
    assert sorted(cycle[:-1]) == ["p", "q", "r"]
    # Each printed step goes from a job to one that depends on it.
    deps = {j.id: j.deps for j in jobs}
    for before, after in itertools.pairwise(cycle):
        assert before in deps[after]


def _longest_by_enumeration(jobs: list[Job], start: str) -> float:
    """Enumerate every path to a sink (exponential, fine for small graphs)."""
    work = {j.id: j.work_estimate for j in jobs}
    users: dict[str, list[str]] = {j.id: [] for j in jobs}
    for j in jobs:
        for d in j.deps:
            users[d].append(j.id)
    best = 0.0
    stack = [(start, work[start])]
    while stack:
        node, total = stack.pop()
        if not users[node]:
            best = max(best, total)
        stack.extend((u, total + work[u]) for u in users[node])
    return best


def _random_jobs(seed: int, n: int = 14) -> list[Job]:
    rng = random.Random(seed)  # noqa: S311 -- reproducible test input
    jobs = []
    for i in range(n):
        deps = tuple(
            sorted({f"j{rng.randrange(i)}" for _ in range(rng.randint(0, 3))} if i else ())
        )
        jobs.append(Job(f"j{i}", round(rng.uniform(0.5, 9), 2), deps))
    return jobs


@pytest.mark.parametrize("seed", range(5))
def test_critical_path_matches_path_enumeration(seed: int) -> None:
    jobs = _random_jobs(seed)
    g = JobGraph(reversed(jobs))  # input order does not matter
    for j in jobs:
        assert g.critical_path(j.id) == pytest.approx(_longest_by_enumeration(jobs, j.id))
    assert g.graph_critical_path() == pytest.approx(
        max(_longest_by_enumeration(jobs, j.id) for j in jobs)
    )


@pytest.mark.parametrize("seed", range(5))
def test_longest_path_with_other_weights_matches_path_enumeration(seed: int) -> None:
    jobs = _random_jobs(seed)
    g = JobGraph(reversed(jobs))
    # Weights in the graph's own job order, each job's weight unlike its work.
    weights = {j.id: (i % 4) * 1.5 for i, j in enumerate(jobs)}
    reweighted = [Job(j.id, weights[j.id], j.deps) for j in jobs]
    expected = max(_longest_by_enumeration(reweighted, j.id) for j in jobs)
    assert expected != g.graph_critical_path()
    assert g.longest_path([weights[j.id] for j in g.jobs()]) == pytest.approx(expected)
    assert JobGraph([]).longest_path([]) == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_estimate_update_equals_rebuilding(seed: int) -> None:
    jobs = _random_jobs(seed)
    g = JobGraph(jobs)
    rng = random.Random(seed + 100)  # noqa: S311 -- reproducible test input
    for _ in range(6):
        target = rng.choice(jobs)
        new_work = round(rng.uniform(0, 30), 2)
        before = {j.id: g.critical_path(j.id) for j in jobs}
        changed = set(g.update_estimate(target.id, new_work))
        jobs = [Job(j.id, new_work, j.deps) if j.id == target.id else j for j in jobs]
        fresh = JobGraph(jobs)
        for j in jobs:
            assert g.critical_path(j.id) == pytest.approx(fresh.critical_path(j.id))
        assert changed == {j.id for j in jobs if before[j.id] != fresh.critical_path(j.id)}


@pytest.mark.parametrize("seed", range(5))
def test_estimates_updated_at_once_equal_rebuilding(seed: int) -> None:
    # A run's learning changes every waiting guess at once (update_estimates).
    jobs = _random_jobs(seed)
    g = JobGraph(jobs)
    rng = random.Random(seed + 200)  # noqa: S311 -- reproducible test input
    works = {j.id: round(rng.uniform(0, 30), 2) for j in rng.sample(jobs, len(jobs) // 2)}
    before = {j.id: g.critical_path(j.id) for j in jobs}
    changed = set(g.update_estimates(works))
    fresh = JobGraph([Job(j.id, works.get(j.id, j.work_estimate), j.deps) for j in jobs])
    for j in jobs:
        assert g.critical_path(j.id) == pytest.approx(fresh.critical_path(j.id))
    assert changed == {j.id for j in jobs if before[j.id] != fresh.critical_path(j.id)}
    assert g.work_left == pytest.approx(fresh.work_left)


def test_a_wide_graphs_root_is_worked_out_once_for_all_its_dependents_changed() -> None:
    # Each leaf's own update walked to the root and took the max over its 4,000 dependents:
    # a first run of 4,000 new names stalled for 80 s learning its guesses (tester).
    leaves = [Job(f"leaf{i}", 10.0, ("root",)) for i in range(4000)]
    g = JobGraph([Job("root", 1.0, ()), *leaves])
    counted: list[int] = []
    real_max = max

    def counting_max(*args: object, **kwargs: object) -> object:
        counted.append(1)
        return real_max(*args, **kwargs)  # type: ignore[call-overload]

    dag_module.max = counting_max  # type: ignore[attr-defined]
    try:
        g.update_estimates({job.id: 2.0 for job in leaves})
    finally:
        del dag_module.max  # type: ignore[attr-defined]
    assert g.critical_path("root") == 3.0
    assert len(counted) <= len(leaves) + 1  # each leaf, and the root once


def test_topological_order_puts_deps_first() -> None:
    jobs = _random_jobs(7, n=40)
    order = JobGraph(reversed(jobs)).topological_order()
    position = {name: i for i, name in enumerate(order)}
    assert len(order) == 40
    for j in jobs:
        for d in j.deps:
            assert position[d] < position[j.id]


def test_undone_job_runs_again_and_its_waiting_dependents_wait_for_it() -> None:
    g = diamond()
    for name in ("a", "b"):
        g.mark_started(name)
        g.mark_done(name)
    g.mark_started("c")
    # a's outputs are gone: c (running, fed already) keeps running, d waits for a again.
    ready, demoted, _ = g.mark_undone(["a"])
    assert (ready, demoted) == (["a"], [])
    assert g.state("b") is JobState.DONE
    assert g.state("c") is JobState.RUNNING
    assert g.count(JobState.DONE) == 1
    g.mark_started("a")
    assert g.mark_done("a") == []  # b and c are not pending: nothing new becomes ready
    assert g.mark_done("c") == ["d"]


def test_undoing_a_chain_readies_its_first_job_and_demotes_ready_dependents() -> None:
    g = JobGraph([job("a"), job("b", 1, "a"), job("c", 1, "b"), job("x", 1, "b")])
    for name in ("a", "b"):
        g.mark_started(name)
        g.mark_done(name)
    assert sorted(g.ready()) == ["c", "x"]
    g.mark_started("x")
    ready, demoted, _ = g.mark_undone(["a", "b"])
    assert ready == ["a"]
    assert demoted == ["c"]
    assert g.state("b") is JobState.PENDING
    # x was running when b was undone: if its machine goes away it must wait for b again.
    assert g.mark_returned("x") == []
    assert g.state("x") is JobState.PENDING
    g.mark_started("a")
    assert g.mark_done("a") == ["b"]
    g.mark_started("b")
    assert sorted(g.mark_done("b")) == ["c", "x"]
    with pytest.raises(SchedulerError, match="cannot undo 'c': it is ready"):
        g.mark_undone(["c"])


def test_a_job_undone_after_its_dependency_failed_is_skipped_not_left_waiting() -> None:
    # a was undone, made again and failed; b (done meanwhile) is then undone too: it waited
    # for a forever, and the run ended "no machine can take them" instead of "skipped".
    g = JobGraph([job("a"), job("b", 1, "a"), job("c", 1, "b"), job("d", 1, "c")])
    for name in ("a", "b"):
        g.mark_started(name)
        g.mark_done(name)
    g.mark_undone(["a"])
    g.mark_started("a")
    g.mark_failed("a")
    assert g.state("b") is JobState.DONE
    assert g.mark_undone(["b"]) == ([], ["c"], ["b", "c", "d"])  # c was ready
    assert [g.state(n) for n in "abcd"] == [JobState.FAILED, *[JobState.SKIPPED] * 3]
    assert g.finished
    assert g.work_left == 0


def test_a_failed_dependency_of_a_done_job_keeps_its_path_at_zero() -> None:
    # After the undo-then-fail above, a later failure downstream and a new estimate both
    # walked up through the failed job and gave it (and its ancestors) its old path back.
    g = JobGraph([job("r"), job("y", 1, "r"), job("x", 1, "y"), job("w", 50, "x"),
                  job("q", 0.5, "r")])  # fmt: skip
    for name in ("r", "y", "q", "x"):
        g.mark_started(name)
        g.mark_done(name)
    g.mark_started("w")
    g.mark_undone(["y"])
    g.mark_started("y")
    g.mark_failed("y")
    g.mark_undone(["r"])
    assert g.critical_path("r") == 1.5
    g.mark_failed("w")
    assert (g.critical_path("y"), g.critical_path("r")) == (0.0, 1.5)
    g.update_estimate("x", 7)
    assert (g.critical_path("y"), g.critical_path("r")) == (0.0, 1.5)


def _left_by_sum(graph: JobGraph) -> float:
    live = (JobState.PENDING, JobState.READY, JobState.RUNNING)
    return sum(graph.work(j.id) for j in graph.jobs() if graph.state(j.id) in live)


@pytest.mark.parametrize("seed", range(20))
def test_work_left_follows_every_transition(seed: int) -> None:
    """Kept through starts, ends, failures, returns, undos and new estimates, it equals the
    sum over the jobs not done, failed nor skipped."""
    rng = random.Random(seed)  # noqa: S311 -- reproducible test input
    graph = JobGraph(_random_jobs(seed))
    assert graph.work_left == pytest.approx(graph.total_work())
    done: list[str] = []
    for _ in range(60):
        ready, running = (
            graph.ready(),
            [j.id for j in graph.jobs() if graph.state(j.id) is JobState.RUNNING],
        )
        move = rng.choice(["start", "end", "fail", "return", "undo", "estimate"])
        if move == "start" and ready:
            graph.mark_started(rng.choice(ready))
        elif move == "end" and running:
            done.append(job_id := rng.choice(running))
            graph.mark_done(job_id)
        elif move == "fail" and running and rng.random() < 0.3:
            graph.mark_failed(rng.choice(running))
        elif move == "return" and running:
            graph.mark_returned(rng.choice(running))
        elif move == "undo" and done:
            # Undone with its done dependents' outputs kept: only jobs whose deps are all done.
            job_id = done.pop()
            if graph.state(job_id) is JobState.DONE:
                graph.mark_undone([job_id])
        elif move == "estimate":
            graph.update_estimate(rng.choice(list(graph.jobs())).id, rng.uniform(0, 9))
        assert graph.work_left == pytest.approx(_left_by_sum(graph), abs=1e-9)
