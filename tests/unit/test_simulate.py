"""The discrete-event simulator, its bound, `offload simulate`, and the planning cost probe."""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from offload.cli import simulate as simulate_cli
from offload.errors import ConfigError, SchedulerError
from offload.scheduler.dag import Job, JobGraph
from offload.scheduler.generated import layered_jobs, plan_cost, random_machines
from offload.scheduler.policy import Decision, MachineSlotSpec, Policy, Wait
from offload.scheduler.simulate import SimResult, lower_bound, simulate
from tests.helpers.compiled import scheduler_compiled

X86 = frozenset({"x86_64-linux"})
# The local fleet of the benchmarks: the local machine plus members of speed 4, 2 and 1.
FLEET = [
    MachineSlotSpec("local", 1, 2, X86),
    MachineSlotSpec("fast", 4, 2, X86),
    MachineSlotSpec("medium", 2, 2, X86),
    MachineSlotSpec("slow", 1, 2, X86),
]


def independent_bound(jobs: list[Job], machines: list[MachineSlotSpec]) -> float:
    """The bound computed here from scratch: longest path by memoised recursion over deps."""
    by_id = {j.id: j for j in jobs}
    finish: dict[str, float] = {}

    def longest_to(name: str) -> float:
        if name not in finish:
            job = by_id[name]
            finish[name] = job.work_estimate + max((longest_to(d) for d in job.deps), default=0)
        return finish[name]

    critical = max(longest_to(j.id) for j in jobs)
    total = sum(j.work_estimate for j in jobs)
    fastest = max(m.speed for m in machines)
    capacity = sum(m.speed * m.slots for m in machines)
    return max(critical / fastest, total / capacity)


def check_schedule(result: SimResult, jobs: list[Job], machines: list[MachineSlotSpec]) -> None:
    """Every job built once, after its deps, and no machine ever over its slots."""
    built = [r for r in result.schedule if r.outcome == "built"]
    assert sorted(r.job for r in built) == sorted(j.id for j in jobs)
    end = {r.job: r.end for r in built}
    start = {r.job: r.start for r in built}
    for j in jobs:
        for d in j.deps:
            assert end[d] <= start[j.id] + 1e-9
    slots = {m.name: m.slots for m in machines}
    points: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for r in result.schedule:
        points[r.machine] += [(r.start, 1), (r.end, -1)]
    for name, events in points.items():
        busy = 0
        for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
            busy += delta
            assert busy <= slots[name]
    assert result.makespan == pytest.approx(max(r.end for r in built))


@pytest.mark.parametrize(("n", "seed", "width"), [(60, 0, 10), (120, 1, 16), (200, 2, 24)])
def test_makespan_close_to_lower_bound(n: int, seed: int, width: int) -> None:
    # Sizes and work like the benchmarks' layered graphs (0.4-2 s per node at speed 1).
    jobs = layered_jobs(n, seed, width=width, work_range=(0.4, 2.0), big_share=0.0)
    result = simulate(jobs, FLEET)
    bound = independent_bound(jobs, FLEET)
    assert result.lower_bound == pytest.approx(bound)
    assert bound <= result.makespan <= 1.25 * bound
    check_schedule(result, jobs, FLEET)


@pytest.mark.parametrize("seed", range(6))
def test_makespan_never_below_bound(seed: int) -> None:
    rng = random.Random(seed)  # noqa: S311 -- reproducible test input
    jobs = layered_jobs(rng.randint(20, 120), seed, width=rng.randint(2, 30))
    machines = random_machines(rng.randint(1, 6), seed, system="x86_64-linux")
    result = simulate(jobs, machines)
    assert result.makespan >= independent_bound(jobs, machines) * (1 - 1e-9)
    check_schedule(result, jobs, machines)


def test_chain_runs_on_the_fastest_machine() -> None:
    jobs = [Job(f"c{i}", 4, (f"c{i - 1}",) if i else (), "x86_64-linux") for i in range(10)]
    result = simulate(jobs, FLEET)
    assert {r.machine for r in result.schedule} == {"fast"}
    assert result.makespan == pytest.approx(result.lower_bound)


def test_noise_triggers_speculation_and_cancels_losers() -> None:
    jobs = layered_jobs(60, 5, width=6)
    result = simulate(jobs, FLEET, noise=0.8, seed=3)
    assert result.speculations > 0
    # Each copy either won (built) or lost (cancelled): nothing is left running.
    assert result.cancelled == result.speculations
    cancelled = [r for r in result.schedule if r.outcome == "cancelled"]
    for loser in cancelled:
        [winner] = [r for r in result.schedule if r.job == loser.job and r.outcome == "built"]
        assert winner.end == loser.end  # stopped the moment the other copy finished
        assert winner.speculative != loser.speculative
    check_schedule(result, jobs, FLEET)
    again = simulate(jobs, FLEET, noise=0.8, seed=3)
    assert again == result


def test_an_overdue_copy_goes_only_to_a_machine_faster_than_its_own() -> None:
    # long overran its 1 s on fast (it takes 100 s there): it was copied onto slow, 10x
    # slower, on the estimate the overrun had disproved, and that copy held the only slot
    # n2 could use until long ended (makespan 105, not 100).
    x = frozenset({"x"})
    fleet = [
        MachineSlotSpec("fast", 10.0, 1, x),
        MachineSlotSpec("slow", 1.0, 1, x, frozenset({"f"})),
        MachineSlotSpec("side", 1.0, 1, x, frozenset(), frozenset({"g"})),
    ]
    jobs = [
        Job("long", 10, (), "x"),
        Job("m1", 60, (), "x", frozenset({"g"})),
        Job("m2", 5, ("m1",), "x", frozenset({"f"})),
        Job("n1", 10, ("m1",), "x", frozenset({"g"})),
        Job("n2", 5, ("n1",), "x", frozenset({"f"})),
    ]
    actual = {"long": 1000, "m1": 60, "m2": 5, "n1": 10, "n2": 5}
    result = simulate(jobs, fleet, actual=actual)
    assert not [r for r in result.schedule if r.speculative]
    assert result.makespan == 100.0


def test_every_build_takes_its_true_work_whatever_the_policy_assumed() -> None:
    # A first run: every estimate a guess of 1 s, the truth up to 30x that. The overrun rule
    # copies a build past 4x its guess assuming twice the work done; the copy still runs its
    # true work from zero (it was once ended as the estimate's error added to that assumption).
    rng = random.Random(7)  # noqa: S311 -- reproducible test input
    truth = layered_jobs(120, 7, width=8)
    actual = {j.id: j.work_estimate * rng.choice([0.2, 1.0, 30.0]) for j in truth}
    guessed = [Job(j.id, 1.0, j.deps, j.system, j.required_features) for j in truth]
    result = simulate(guessed, FLEET, actual=actual, guessed=list(actual))
    speeds = {m.name: m.speed for m in FLEET}
    built = [r for r in result.schedule if r.outcome == "built"]
    assert any(r.speculative for r in built)
    for r in built:
        assert r.end - r.start == pytest.approx(actual[r.job] / speeds[r.machine]), r


@pytest.mark.skipif(
    scheduler_compiled(), reason="compiled: the simulator calls the policy's own next_decisions"
)
def test_the_policy_is_not_asked_when_only_a_cancelled_copy_was_due(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[float] = []
    wakes: set[float] = set()
    real = Policy.next_decisions

    def spy(self: Policy, now: float) -> list[Decision]:
        asked.append(now)
        decisions = real(self, now)
        wakes.update(d.until for d in decisions if isinstance(d, Wait))
        return decisions

    monkeypatch.setattr(Policy, "next_decisions", spy)
    result = simulate(layered_jobs(60, 5, width=6), FLEET, noise=0.8, seed=3)
    assert result.cancelled > 0
    assert asked  # the spy is what the simulator called
    # The policy hears of a time only through a copy that ended for real or a wake it asked for.
    told = {0.0} | wakes | {r.end for r in result.schedule if r.outcome != "cancelled"}
    assert set(asked) <= told
    assert len(asked) == len(set(asked))


def test_speculation_can_be_turned_off() -> None:
    jobs = layered_jobs(60, 5, width=6)
    result = simulate(jobs, FLEET, noise=0.8, seed=3, speculate=False)
    assert result.speculations == 0
    assert all(r.outcome == "built" for r in result.schedule)


def test_failing_build_skips_dependents_and_builds_the_rest() -> None:
    jobs = [
        Job("bad", 2, (), "x86_64-linux"),
        Job("child", 1, ("bad",), "x86_64-linux"),
        Job("grandchild", 1, ("child", "ok"), "x86_64-linux"),
        Job("ok", 1, (), "x86_64-linux"),
        Job("ok2", 3, ("ok",), "x86_64-linux"),
    ]
    result = simulate(jobs, FLEET, failing={"bad"})
    assert result.failed == ("bad",)
    assert sorted(result.skipped) == ["child", "grandchild"]
    assert sorted(r.job for r in result.schedule if r.outcome == "built") == ["ok", "ok2"]


def test_machine_failure_reschedules_its_work() -> None:
    jobs = layered_jobs(40, 9, width=8)
    result = simulate(jobs, FLEET, machine_failures=[(3.0, "fast")])
    lost = [r for r in result.schedule if r.outcome == "lost"]
    assert lost
    assert all(r.machine == "fast" and r.end == 3.0 for r in lost)
    # Nothing runs on fast during its 60 s backoff.
    assert not [r for r in result.schedule if r.machine == "fast" and 3.0 <= r.start < 63.0]
    check_schedule(result, jobs, FLEET)


def test_unschedulable_input_raises() -> None:
    jobs = [Job("arm", 1, (), "aarch64-linux")]
    with pytest.raises(SchedulerError, match="arm"):
        simulate(jobs, FLEET)


def test_lower_bound_needs_a_slot() -> None:
    with pytest.raises(SchedulerError):
        lower_bound([Job("a", 1)], [MachineSlotSpec("m", 1, 0)])


# offload simulate


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    simulate_cli.register(parser.add_subparsers())
    args = parser.parse_args(["simulate", *argv])
    result: int = args.func(args)
    return result


def _dag_file(tmp_path: Path) -> Path:
    nodes = [
        {"name": "base", "work": 4},
        {"name": "left", "work": 6, "deps": ["base"]},
        {"name": "right", "work": 2, "deps": ["base"], "features": ["big-parallel"]},
        {"name": "top", "work": 1, "deps": ["left", "right"], "system": "x86_64-linux"},
        {"name": "side", "work": 8},
    ]
    path = tmp_path / "dag.json"
    path.write_text(json.dumps({"nodes": nodes}))
    return path


def test_cli_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli([str(_dag_file(tmp_path)), "--json", "--machines", "a:2:1,b:1:1"]) == 0
    out = json.loads(capsys.readouterr().out)
    # critical path base+left+top = 11 at speed 2; work 21 over capacity 3.
    assert out["lower_bound"] == pytest.approx(7.0)
    assert out["makespan"] >= out["lower_bound"]
    assert out["ratio"] == pytest.approx(out["makespan"] / out["lower_bound"])
    assert [m["name"] for m in out["machines"]] == ["a", "b"]
    assert sum(m["built"] for m in out["machines"]) == 5


def test_cli_json_of_an_empty_graph_says_its_work_as_a_float(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # As every other graph's, and as offload built compiled (setup.py) says it: a float, 0.0.
    empty = tmp_path / "empty.json"
    empty.write_text('{"nodes": []}')
    assert _cli([str(empty), "--json"]) == 0
    out = capsys.readouterr().out
    assert '"total_work": 0.0,' in out
    assert '"critical_path": 0.0,' in out


def test_cli_text_and_default_machines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli([str(_dag_file(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "makespan" in out
    assert "lower bound" in out
    for name in ("local", "fast", "medium", "slow"):
        assert name in out


def test_cli_feature_fields_restrict_machines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = "big:8:1:big-parallel:big-parallel,small:1:1:"
    assert _cli([str(_dag_file(tmp_path)), "--json", "--machines", spec]) == 0
    out = json.loads(capsys.readouterr().out)
    built = {m["name"]: m["built"] for m in out["machines"]}
    assert built == {"big": 1, "small": 4}


@pytest.mark.parametrize(
    "spec", ["a:1", "a:x:1", "a:1:1,a:2:2", "a:0:1", "a:1:0", "", "a:1e-300:1", "a:nan:1"]
)
def test_cli_rejects_bad_machine_specs(tmp_path: Path, spec: str) -> None:
    with pytest.raises(ConfigError):
        _cli([str(_dag_file(tmp_path)), "--machines", spec])


# Planning cost: reported, never asserted on time (time targets belong to the benchmarks).


def test_plan_cost_reports(capsys: pytest.CaptureFixture[str]) -> None:
    cost = plan_cost(1000, 100, seed=1)
    assert cost.seconds > 0
    assert cost.peak_bytes > 0
    with capsys.disabled():
        sys.stdout.write(
            f"\nplan_cost(1000 nodes, 100 machines): {cost.seconds:.3f} s, "
            f"{cost.peak_bytes / 2**20:.1f} MiB peak\n"
        )


def test_without_the_bound_the_schedule_is_the_same() -> None:
    jobs = layered_jobs(300, 4, feature_share=0.2)
    machines = random_machines(6, 4)
    with_bound = simulate(jobs, machines, noise=0.3, seed=4)
    without = simulate(jobs, machines, noise=0.3, seed=4, bound=False)
    assert with_bound.lower_bound > 0
    assert without.lower_bound == 0
    assert without.ratio is None
    assert without.schedule == with_bound.schedule


def test_the_bound_counts_jobs_only_where_their_features_are() -> None:
    fast = MachineSlotSpec("fast", 4, 1, frozenset({"x"}), frozenset())
    gpu = MachineSlotSpec("gpu", 1, 1, frozenset({"x"}), frozenset({"cuda"}))
    jobs = [Job(f"g{i}", 10, (), "x", frozenset({"cuda"})) for i in range(3)]
    # Without features: 30 work over capacity 5 = 6 s. Only gpu can build them: 30 s.
    assert lower_bound(jobs, [fast, gpu]) == pytest.approx(30.0)
    chain = [Job("a", 8, (), "x"), Job("b", 8, ("a",), "x", frozenset({"cuda"}))]
    # a on fast (2 s), then b on gpu, the only machine that can (8 s).
    assert lower_bound(chain, [fast, gpu]) == pytest.approx(10.0)


def test_the_bound_leaves_out_the_jobs_after_one_no_machine_can_build() -> None:
    # b (100 s) waits on a, which no machine can build: b is skipped, never built, so a bound
    # counting it (100 s) was above the run itself (0 s) and the ratio said 0.000x.
    x86 = MachineSlotSpec("m", 1, 1, frozenset({"x86_64-linux"}))
    jobs = [
        Job("a", 1, (), "aarch64-linux"),
        Job("b", 100, ("a",), "x86_64-linux"),
        Job("c", 3, (), "x86_64-linux"),
    ]
    assert lower_bound(jobs, [x86]) == pytest.approx(3.0)
    result = simulate(jobs, [x86], strict=False)
    assert result.skipped == ("b",)
    assert result.makespan >= result.lower_bound


@pytest.mark.parametrize("work", [math.inf, math.nan, -1.0])
def test_a_work_estimate_that_is_no_finite_number_is_refused(work: float) -> None:
    # An infinite one made an end at NaN, never the next instant: simulate looped for ever.
    with pytest.raises(SchedulerError, match="must be a finite number >= 0"):
        simulate([Job("a", work)], [MachineSlotSpec("m")])
    graph = JobGraph([Job("a", 1.0)])
    with pytest.raises(SchedulerError, match="must be a finite number >= 0"):
        graph.update_estimate("a", work)
    assert graph.work("a") == 1.0


def test_a_machine_failure_at_no_time_and_a_speed_too_small_are_refused() -> None:
    with pytest.raises(SchedulerError, match="not a time"):
        simulate([Job("a", 1.0)], [MachineSlotSpec("m")], machine_failures=[(math.nan, "m")])
    with pytest.raises(SchedulerError, match="speed must be at least 1e-06"):
        MachineSlotSpec("m", 1e-300, 1)


def test_cli_machines_have_nixs_default_features_only(tmp_path: Path) -> None:
    dag = tmp_path / "dag.json"
    dag.write_text(json.dumps({"nodes": [{"name": "train", "work": 1, "features": ["cuda"]}]}))
    with pytest.raises(SchedulerError, match="cuda"):
        _cli([str(dag)])
    assert _cli([str(dag), "--machines", "gpu:1:1:cuda"]) == 0


def test_cli_a_node_no_machine_can_build_is_told_with_simulates_own_fix(tmp_path: Path) -> None:
    # The scheduler's hint was offload build's --keep-going, an option simulate has not, and a
    # node without a system "needed system builtin".
    path = tmp_path / "dag.json"
    path.write_text(json.dumps({"nodes": [{"name": "a", "work": 1, "features": ["gpu"]}]}))
    with pytest.raises(SchedulerError) as caught:
        _cli([str(path), "--machines", "a:1:1"])
    assert caught.value.message.startswith("no machine can build a: it needs gpu;")
    assert caught.value.hint is not None
    assert "--keep-going" not in caught.value.hint
    assert caught.value.hint.startswith("give --machines one that offers what it needs")
    # A machine that requires a feature the node does not ask for: its fix is to require less
    # (README tester: "it needs any system", "give --machines one with those features").
    path.write_text(json.dumps({"nodes": [{"name": "b", "work": 1}, {"name": "c", "work": 1}]}))
    with pytest.raises(SchedulerError) as caught:
        _cli([str(path), "--machines", "m1:1:2:gpu:gpu"])
    assert caught.value.message == (
        "no machine can build b: it needs no system or feature; m1 only takes jobs requiring"
        " gpu (and 1 more job)"
    )
    assert caught.value.hint is not None
    assert "requires nothing else" in caught.value.hint


def test_a_plans_records_and_decisions_are_values_equal_and_hashable_by_their_fields():
    # Made by __init__s of their own for mypyc (policy/decisions.py): still values.
    from offload.scheduler.policy.decisions import Cancel, Finished, Speculate, Start
    from offload.scheduler.simulate import RunRecord

    made = [
        lambda: Start("a", "fast", 1.0),
        lambda: Speculate("a", "fast", 1.0, "slow"),
        lambda: Cancel("a", "slow"),
        lambda: Finished(True, (Cancel("a", "slow"),), ("b",)),
        lambda: RunRecord("a", "fast", 0.0, 1.0, "built", speculative=True),
    ]
    for make in made:
        assert make() == make()
        assert hash(make()) == hash(make())
    assert Start("a", "fast", 1.0) != Start("a", "fast", 2.0)
    assert Finished(True).cancel == ()
    assert RunRecord("a", "m", 0, 1, "lost").speculative is False
    result = simulate([Job("a", 1.0)], [MachineSlotSpec("local", 1.0, 1)])
    assert hash(result) == hash(simulate([Job("a", 1.0)], [MachineSlotSpec("local", 1.0, 1)]))


def test_cli_nixs_policy_fails_as_nix_build_when_a_node_cannot_be_built(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # It printed "failed 1" and exited 0, where --policy offload exits 1.
    dag = tmp_path / "dag.json"
    dag.write_text(json.dumps({"nodes": [{"name": "train", "work": 1, "features": ["cuda"]}]}))
    with pytest.raises(SchedulerError, match=r"^no machine can build train"):
        _cli([str(dag), "--policy", "nix"])
    assert "failed 1" in capsys.readouterr().out  # the simulated run is shown all the same


def test_cli_tunes_the_plan_unless_told_not_to(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # tests/unit/test_search.py's spine and side job: 14.5 s plainly, 10.5 s tuned.
    nodes = [
        {"name": "a", "work": 7},
        {"name": "b", "work": 9},
        {"name": "c", "work": 6, "deps": ["a"]},
        {"name": "d", "work": 8, "deps": ["a", "c"]},
    ]
    dag = tmp_path / "dag.json"
    dag.write_text(json.dumps({"nodes": nodes}))
    makespans = []
    for more in ([], ["--no-tune"]):
        assert _cli([str(dag), "--json", "--machines", "local:1:1,fast:2:1", *more]) == 0
        makespans.append(json.loads(capsys.readouterr().out)["makespan"])
    assert makespans == [10.5, 14.5]
