"""`offload simulate`'s two policies against what the last `make bench` measured (issue #16):
each graph's simulated makespan within 15% of the measured median, for Nix's hook and offload
(or of one measured run, where the runs themselves differ by more than that: ``Check.split``)."""

from __future__ import annotations

import json

from bench.model_check import TARGET, Check, checks, latest_results


def test_both_models_predict_the_last_bench_run_within_15_percent() -> None:
    results = json.loads(latest_results().read_text())
    found = checks(results)
    assert {c.tool for c in found} == {"nix", "offload"}
    assert len(found) == 2 * len(results["graphs"])
    outside = [f"{c.shape}/{c.tool}: {c.ratio:.2f}" for c in found if not c.within]
    assert not outside, f"outside {TARGET:.0%}: {outside}"


def test_a_split_outcome_counts_only_when_the_prediction_matches_one_of_the_runs() -> None:
    # Nix's hook on `huge`: 36.1 s when a long build went to the slow member, 25.5 otherwise.
    split = (25.4, 25.7, 36.1)
    assert Check("huge", "nix", 25.7, 35.5, split).within
    assert not Check("huge", "nix", 25.7, 45.0, split).within
    # Runs that agree leave the median as the only yardstick.
    steady = (25.4, 25.7, 26.0)
    assert not Check("huge", "nix", 25.7, 35.5, steady).split
    assert not Check("huge", "nix", 25.7, 35.5, steady).within
