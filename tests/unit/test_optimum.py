"""The bench's yardstick (an exact solver's makespan), the seed evaluation and doc sections."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from bench.optimum import optimum
from bench.sections import keep_sections, put_section
from bench.seeds import CONDITIONS, graph_jobs, run_condition

from offload.scheduler.dag import Job
from offload.scheduler.policy import MachineSlotSpec
from offload.scheduler.policy.guesses import DEFAULT_WORK, Guesses, guessed_work
from offload.scheduler.simulate import lower_bound, simulate

X86 = frozenset({"x86_64-linux"})
BIG = frozenset({"big-parallel"})


def test_optimum_beats_the_bound_where_the_bound_is_loose() -> None:
    # Three 2 s jobs on two one-slot machines of speed 1: the bound is 3 s, the optimum 4 s.
    jobs = [Job(f"j{i}", 2.0, (), "x86_64-linux") for i in range(3)]
    machines = [MachineSlotSpec(f"m{i}", 1.0, 1, X86) for i in range(2)]
    found = optimum(jobs, machines, seconds=5)
    assert lower_bound(jobs, machines) == pytest.approx(3.0)
    assert found.solved
    assert found.makespan == pytest.approx(4.0)
    assert found.gap == pytest.approx(0.0)


def test_optimum_respects_features_and_dependencies() -> None:
    # The big job may only run on the slow machine that offers big-parallel.
    jobs = [
        Job("a", 1.0, (), "x86_64-linux"),
        Job("big", 4.0, ("a",), "x86_64-linux", BIG),
    ]
    machines = [
        MachineSlotSpec("fast", 4.0, 1, X86),
        MachineSlotSpec("slow", 1.0, 1, X86, BIG),
    ]
    found = optimum(jobs, machines, seconds=5)
    assert found.makespan == pytest.approx(0.25 + 4.0)


def test_a_cost_per_build_is_paid_by_every_build_on_any_machine() -> None:
    # A chain of three: each link pays the cost on the fast machine whatever its speed, so
    # the chain takes 3 x (1/4 + 0.1); four independent jobs on two slots pay it twice a slot.
    chain = [Job("a", 1.0, ()), Job("b", 1.0, ("a",)), Job("c", 1.0, ("b",))]
    machines = [MachineSlotSpec("fast", 4.0, 1), MachineSlotSpec("slow", 1.0, 1)]
    assert optimum(chain, machines, seconds=5).makespan == pytest.approx(0.75)
    assert optimum(chain, machines, seconds=5, cost=0.1).makespan == pytest.approx(1.05)
    wide = [Job(f"w{i}", 1.0, ()) for i in range(4)]
    two = [MachineSlotSpec("m", 1.0, 2)]
    assert optimum(wide, two, seconds=5, cost=0.25).makespan == pytest.approx(2.5)


def test_without_a_solver_the_answer_is_the_lower_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ortools.sat.python", None)
    jobs = [Job(f"j{i}", 2.0, (), "x86_64-linux") for i in range(3)]
    machines = [MachineSlotSpec(f"m{i}", 1.0, 1, X86) for i in range(2)]
    found = optimum(jobs, machines)
    assert not found.solved
    assert found.makespan == pytest.approx(3.0)
    assert "no solver" in found.status


def test_the_bound_holds_for_the_exact_durations_not_the_rounded_ones() -> None:
    # Three 2.0066 s jobs on two one-slot machines: the optimum is 2 x 2.0066 = 4.0132 s. A
    # model whose durations were rounded up (to 10 ms: 2.01 s) proved 4.02 s, past the optimum.
    jobs = [Job(f"j{i}", 2.0066, (), "x86_64-linux") for i in range(3)]
    machines = [MachineSlotSpec(f"m{i}", 1.0, 1, X86) for i in range(2)]
    found = optimum(jobs, machines, seconds=5)
    assert found.makespan == pytest.approx(4.0132)
    assert found.bound <= 4.0132
    assert found.bound > lower_bound(jobs, machines)


def test_a_job_of_no_length_is_timed_after_its_dependency_at_the_same_start() -> None:
    # Rounded down to 0 ms, a's interval starts where b's does: b was timed first, and the
    # exact timing of the solver's schedule failed on a's end (KeyError).
    jobs = [Job("b", 1.0, ("a",)), Job("a", 0.0)]
    found = optimum(jobs, [MachineSlotSpec("m", 1.0, 1)], seconds=5)
    assert found.makespan == pytest.approx(1.0)


def test_unsolved_with_a_hint_the_answer_is_the_hints_schedule_against_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "ortools.sat.python", None)
    jobs = [Job(f"j{i}", 2.0, (), "x86_64-linux") for i in range(3)]
    machines = [MachineSlotSpec(f"m{i}", 1.0, 1, X86) for i in range(2)]
    # A poor schedule: all three on m0, one after another.
    hint = {"j0": ("m0", 0.0), "j1": ("m0", 2.0), "j2": ("m0", 4.0)}
    found = optimum(jobs, machines, hint=hint)
    assert not found.solved
    assert found.makespan == pytest.approx(6.0)
    assert found.bound == pytest.approx(3.0)
    assert found.gap == pytest.approx(1.0)
    assert "hint" in found.status


def test_offload_never_beats_the_optimum_and_every_condition_runs() -> None:
    jobs = graph_jobs("bootstrap", 40, 7)
    hint = {r.job: (r.machine, r.start) for r in simulate(jobs, _fleet()).schedule}
    best = optimum(jobs, _fleet(), seconds=3, hint=hint)
    for condition in CONDITIONS:
        assert run_condition(condition, jobs, 7) >= best.makespan - 1e-6


def _fleet() -> list[MachineSlotSpec]:
    from bench.seeds import FLEET

    return list(FLEET)


def test_first_run_learns_within_the_run() -> None:
    # Every job takes 1 s but is guessed at DEFAULT_WORK: after the first builds the rest
    # are re-estimated, so a chain's dependents are seen as short.
    jobs = [
        Job(f"j{i}", DEFAULT_WORK, (f"j{i - 1}",) if i else (), "x86_64-linux") for i in range(5)
    ]
    guesses = Guesses.for_jobs(jobs, dict.fromkeys((j.id for j in jobs), 1.0))
    assert guesses.observe("j0", 1.0) == {f"j{i}": 1.0 for i in range(1, 5)}
    assert guesses.observe("j0", 1.0) == {}  # each job teaches once
    assert guesses.observe("j1", 1.2) == {}  # within LEARN_CHANGE of the guess: it stands
    assert guessed_work(BIG) > guessed_work(frozenset())


def test_simulate_with_actual_work_ends_as_the_truth_says() -> None:
    jobs = [Job("a", 10.0, (), "x86_64-linux"), Job("b", 10.0, ("a",), "x86_64-linux")]
    machines = [MachineSlotSpec("m", 2.0, 1, X86)]
    result = simulate(jobs, machines, actual={"a": 1.0, "b": 3.0})
    assert result.makespan == pytest.approx(2.0)


def test_sections_survive_a_rewrite(tmp_path: Path) -> None:
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(put_section("# Benchmarks\n", "seeds", "## Seeds\n\nold\n"), "utf-8")
    updated = put_section(doc.read_text("utf-8"), "seeds", "## Seeds\n\nnew\n")
    assert "old" not in updated
    assert updated.count("<!-- section:seeds -->") == 1
    doc.write_text(updated, "utf-8")
    rewritten = keep_sections(doc, "# Benchmarks\n\nfresh report\n")
    assert "fresh report" in rewritten
    assert "## Seeds\n\nnew" in rewritten
