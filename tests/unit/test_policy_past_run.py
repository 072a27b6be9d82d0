"""A job left without holds does not take a slot so slow that it would end the run later."""

from __future__ import annotations

from offload.scheduler.dag import Job, JobGraph
from offload.scheduler.policy import MachineSlotSpec
from offload.scheduler.policy.placement import MAX_HOLDS_PER_ROUND
from offload.scheduler.policy.slack import ends_past_run
from offload.scheduler.simulate import simulate

X86 = frozenset({"x86_64-linux"})


def job(name: str, work: float, *deps: str) -> Job:
    return Job(name, work, tuple(deps), "x86_64-linux")


def test_a_long_job_past_the_holds_waits_for_the_fast_slot() -> None:
    # One fast slot and one slow one. "x" starts on the fast slot; the next four jobs are held
    # for it (the round's holds); the sixth would end at 16 on the slow slot, later than the
    # six one after another on the fast one (12): it waits too.
    pool = [MachineSlotSpec("fast", 4.0, 1, X86), MachineSlotSpec("slow", 0.5, 1, X86)]
    jobs = [job(f"j{i}", 8.0) for i in range(MAX_HOLDS_PER_ROUND + 2)]
    result = simulate(jobs, pool, speculate=False)
    assert {r.machine for r in result.schedule} == {"fast"}
    assert result.makespan == 12.0
    # Without holds there is no waiting at all: the slow slot is taken at once.
    greedy = simulate(jobs, pool, speculate=False, hold=False)
    assert "slow" in {r.machine for r in greedy.schedule}


def test_the_run_ends_with_its_longest_path_or_its_work_over_the_pool() -> None:
    # "a" (path 4 + 8 = 12 work) and "c" (2 work); pool capacity 5 work/s, fastest speed 4.
    graph = JobGraph([job("a", 4), job("b", 8, "a"), job("c", 2)])
    # The run ends at max(12 / 4, 14 / 5) = 3 s from now.
    check = {"fastest": 4.0, "remaining": 12.0, "work_left": graph.work_left, "capacity": 5.0}
    assert not ends_past_run(graph, "c", 1.0, **check)  # ends at 2
    assert ends_past_run(graph, "c", 0.5, **check)  # ends at 4
    # "a" on a speed-2 machine: 2 s, then "b" at speed 4: 2 s more, past 3.
    assert ends_past_run(graph, "a", 2.0, **check)
    assert not ends_past_run(graph, "a", 4.0, **check)  # exactly 3: a tie is no later
    # With much work left the run ends later, and the slow machine is fine for "c".
    assert not ends_past_run(
        graph, "c", 0.5, fastest=4.0, remaining=12.0, work_left=14.0, capacity=1.0
    )


def test_the_work_left_counts_a_running_job_less_what_is_done() -> None:
    # Four 10 s builds and twelve 2 s ones on local (1x, 1 slot), fast (4x, 2) and slow
    # (0.5x, 1), exact estimates: the optimum is 7 s, slow building one short job. With the
    # two half-done long builds counted whole at 4 s, the run looked to end past 8 s, and a
    # second short job took slow from 4 to 8 while fast went idle at 7 (a tester's run).
    pool = [
        MachineSlotSpec("local", 1.0, 1, X86),
        MachineSlotSpec("fast", 4.0, 2, X86),
        MachineSlotSpec("slow", 0.5, 1, X86),
    ]
    jobs = [job(f"long{i}", 10.0) for i in range(4)] + [job(f"short{i}", 2.0) for i in range(12)]
    result = simulate(jobs, pool)
    assert result.makespan == 7.0
    assert [r.job for r in result.schedule if r.machine == "slow"] == ["short1"]
