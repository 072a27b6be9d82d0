"""`offload simulate`'s two policies against what the last `make bench` measured (issue #16):
each graph's simulated makespan within 15% of the measured median, for Nix's hook and offload."""

from __future__ import annotations

import json

from bench.model_check import TARGET, checks, latest_results


def test_both_models_predict_the_last_bench_run_within_15_percent() -> None:
    results = json.loads(latest_results().read_text())
    found = checks(results)
    assert {c.tool for c in found} == {"nix", "offload"}
    assert len(found) == 2 * len(results["graphs"])
    outside = [f"{c.shape}/{c.tool}: {c.ratio:.2f}" for c in found if not c.within]
    assert not outside, f"outside {TARGET:.0%}: {outside}"
