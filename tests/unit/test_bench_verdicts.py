"""Targets judged against an optimum known within a gap: the verdicts, the seed sets' rows and
their place in the report's targets table."""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

import pytest
from bench import seeds
from bench.report import render_markdown, write_report
from bench.report_seeds import seeds_targets
from bench.verdicts import MET, NOT_MET, UNDECIDED, judge, p90

from offload.scheduler.dag import Job
from offload.scheduler.simulate import simulate


def test_a_target_is_met_only_against_the_bound_and_missed_only_against_the_schedule():
    # (measured, best schedule found, proven bound): the optimum lies in [bound, found].
    within = [(10.5, 10.0, 9.5)] * 3  # 1.05 of the found, 1.105 of the bound
    assert judge(within, 1.15, statistics.median).verdict == MET
    assert judge(within, 1.08, statistics.median).verdict == UNDECIDED
    assert judge(within, 1.04, statistics.median).verdict == NOT_MET
    judged = judge(within, 1.08, statistics.median)
    assert judged.text(unit="x") == "1.050x (bound 1.105x)"
    assert judge([(10.0, 10.0, 10.0)], 1.0, p90).text() == "1.000"
    with pytest.raises(ValueError, match="no values"):
        judge([], 1.0, p90)


def test_p90_is_the_nearest_rank():
    assert p90([float(v) for v in range(1, 31)]) == 27.0
    assert p90([3.0]) == 3.0
    assert p90([float(v) for v in range(1, 11)]) == 9.0


def test_noise_has_a_stream_of_its_own_and_each_draw_differs():
    jobs = seeds.graph_jobs("layered", 30, 5)
    draws = {seeds.run_condition("noisy", jobs, 5, d) for d in range(4)}
    assert len(draws) > 1
    # Not the graph generator's own stream (Random(seed)): the first draw is not what that
    # stream would have laid on the works.
    rng = random.Random(5)  # noqa: S311 - the generator's own stream, to compare with
    same = [j.work_estimate * rng.lognormvariate(0.0, seeds.NOISE) for j in jobs]
    assert seeds.run_condition("noisy", jobs, 5, 0) != pytest.approx(
        simulate(
            seeds._with(jobs, lambda j: same[jobs.index(j)]),
            list(seeds.FLEET),
            actual={j.id: j.work_estimate for j in jobs},
        ).makespan
    )


def test_the_cache_key_follows_the_graph_and_the_solver_not_the_seed_number():
    jobs = seeds.graph_jobs("chain", 20, 3)
    key = seeds.optimum_key(jobs, 10.0)
    assert seeds.optimum_key(jobs, 5.0) != key
    heavier = [
        Job(j.id, j.work_estimate * 1.01, j.deps, j.system, j.required_features) for j in jobs
    ]
    assert seeds.optimum_key(heavier, 10.0) != key
    assert seeds.optimum_key(list(jobs), 10.0) == key


def test_a_stale_cached_optimum_longer_than_a_schedule_found_now_is_not_the_yardstick():
    # A cache entry saying 99 s: every condition's own schedule is shorter, so the best
    # schedule known is the shortest of them and no ratio falls below 1.
    jobs = seeds.graph_jobs("wide", 20, 11)
    cache: dict[str, dict[str, object]] = {
        seeds.optimum_key(jobs, 1.0): {"makespan": 99.0, "bound": 1.0, "solved": True}
    }
    row = seeds.seed_row(cache, "wide", 20, 11, 1.0)
    assert row.best < 99.0
    assert row.best == min(m for c, ms in row.makespans.items() if c != "nix" for m in ms)
    assert row.bound == 1.0
    assert len(row.makespans["noisy"]) == seeds.NOISE_DRAWS
    assert all(m / row.best >= 1.0 for ms in row.makespans.values() for m in ms)


def _rows() -> seeds.Found:
    def row(seed: int, history: float, noisy: list[float]) -> seeds.SeedRow:
        makespans = {c: [10.0] for c in seeds.CONDITIONS}
        makespans |= {"history": [history], "noisy": noisy}
        return seeds.SeedRow(seed, {"solved": True}, 10.0, 9.0, makespans)

    return {"huge": [row(s, 10.2, [10.0, 12.0, 10.5]) for s in range(10)]}


def test_the_seed_sets_verdicts_reach_the_reports_targets_table(tmp_path: Path):
    verdicts = seeds.verdict_rows(_rows(), "python bench/seeds.py --seeds 10")
    by_condition = {row["condition"]: row for row in verdicts["rows"]}
    # history: p90 1.02 of the found, 1.133 of the bound: 1.05 undecided; noisy: p90 1.2 > 1.15.
    assert by_condition["history"]["verdict"] == UNDECIDED
    assert by_condition["noisy"]["verdict"] == NOT_MET
    assert by_condition["noisy"]["runs"] == 30
    lines = seeds_targets({"seeds": verdicts})
    assert len(lines) == 2
    assert "p90 1.020 (bound 1.133) | undecided |" in lines[0]
    assert lines[1].endswith("| p90 1.200 (bound 1.333) | NOT met |")
    assert seeds_targets({}) == []
    # write_report takes seeds.json from beside the results it renders.
    results = tmp_path / "2026-01-01.json"
    results.write_text(json.dumps({"graphs": []}), encoding="utf-8")
    (tmp_path / "seeds.json").write_text(json.dumps(verdicts), encoding="utf-8")
    doc = tmp_path / "BENCHMARKS.md"
    write_report(results, doc)
    assert lines[1] in doc.read_text(encoding="utf-8").splitlines()
    assert lines[1] in render_markdown({"seeds": verdicts}, "x.json", {}).splitlines()
