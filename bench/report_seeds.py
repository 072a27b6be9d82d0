"""The targets table's rows for the simulated seed sets (``bench/seeds.py --report`` writes
``bench/results/seeds.json``, which ``bench/report.py`` reads beside a bench's results): each
shape's p90 of makespan / optimum with exact and with noisy estimates, judged as
``bench/verdicts.py`` judges, against the schedule found and against the bound."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["seeds_targets"]

_WORDS = {"history": "exact estimates", "noisy": "estimates off by 30%"}


def seeds_targets(results: Mapping[str, Any]) -> list[str]:
    """One row per shape and condition; none when the results carry no seed sets."""
    seeds = results.get("seeds")
    if not seeds:
        return []
    lines = []
    for row in seeds["rows"]:
        found, bound = float(row["p90"]), float(row["p90_bound"])
        measured = f"p90 {found:.3f}" + (
            "" if round(bound, 3) == round(found, 3) else f" (bound {bound:.3f})"
        )
        lines.append(
            f"| simulated {row['shape']} ({row['graphs']} graphs, {row['runs']} runs; "
            f"`{seeds['command']}`), {_WORDS.get(row['condition'], row['condition'])}: p90 of "
            f"makespan / optimum <= {float(row['target']):.2f}x | {measured} | {row['verdict']} |"
        )
    return lines
