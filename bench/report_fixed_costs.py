"""The bench's section on fixed costs (``bench/fixed_costs.py``): per phase of ``offload build``,
the median seconds over the repetitions and its share of the median wall time."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from bench.fixed_costs import PHASES

__all__ = ["fixed_cost_lines"]


def _median(values: Sequence[float | None]) -> float | None:
    found = [v for v in values if v is not None]
    return statistics.median(found) if found else None


def _case_lines(label: str, runs: Sequence[Mapping[str, Any]]) -> list[str]:
    ok = [r for r in runs if r.get("status") == "ok" and r.get("phases")]
    lines = ["", f"**{label}** ({len(ok)} of {len(runs)} runs ok)", ""]
    if not ok:
        return [*lines, "No successful run to split."]
    wall = statistics.median(float(r["wall_s"]) for r in ok)
    lines += [
        f"| phase | median (s) | share of wall ({wall:.2f} s) |",
        "|---|---|---|",
    ]
    for phase, _ in PHASES:
        seconds = statistics.median(float(r["phases"].get(phase, 0.0)) for r in ok)
        lines.append(f"| {phase} | {seconds:.3f} | {seconds / wall:.0%} |")
    builds = [r["per_build"] for r in ok if r.get("per_build")]
    if builds:
        parts = ", ".join(
            f"{part} {statistics.median(b[part] for b in builds if part in b):.3f} s"
            for part in ("set-up", "building", "fetching")
            if any(part in b for b in builds)
        )
        lines += ["", f"Per build (median of each run's median): {parts}."]
    return lines


def fixed_cost_lines(results: Mapping[str, Any]) -> list[str]:
    """The section's Markdown lines; none when the results have no ``fixed_costs``."""
    section = results.get("fixed_costs")
    if not section:
        return []
    version = _median(section.get("version_s", []))
    python = _median(section.get("python_s", []))
    lines = [
        "",
        "## Fixed costs of a run",
        "",
        (
            "Where `offload build`'s wall time goes beyond the plan, from offload's own marks "
            "(the `timing` event of `--json`) and its job events, between the outside start of "
            "the process and its exit (`bench/fixed_costs.py` says what each phase holds). "
            "Phases follow each other; builds overlap, so their per-build parts are medians "
            "per build, not shares."
        ),
    ]
    if version is not None and python is not None:
        lines += [
            "",
            (
                f"Interpreter and imports alone: `offload --version` {version:.3f} s "
                f"(a bare `python -c pass`: {python:.3f} s); offload's bytecode compiled "
                "beforehand, as an install has it (`bench/bytecode.py`)."
            ),
        ]
    for label, runs in section.get("cases", {}).items():
        lines += _case_lines(label, runs)
    return lines
