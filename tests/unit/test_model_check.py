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


def test_a_split_prediction_counts_only_when_one_draw_matches_what_was_measured() -> None:
    # Nix's hook on `huge`, simulated: 25.9 s in one draw, 33-37 in the others; measured 25.6.
    draws = (25.9, 33.0, 34.8, 36.9)
    assert Check("huge", "nix", 25.6, 34.8, (25.1, 25.6, 25.6), draws).within
    assert not Check("huge", "nix", 20.0, 34.8, (19.9, 20.0, 20.1), draws).within
    # Draws that agree leave their median as the only prediction.
    assert not Check("huge", "nix", 25.6, 34.8, (25.1, 25.6, 25.6), (33.0, 34.8, 35.0)).within
