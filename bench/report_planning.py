"""The scheduler-cost section of docs/BENCHMARKS.md: planning 1,000-50,000 simulated nodes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.report_format import MIB
from bench.report_summaries import TARGETS, summarize_planning

# What the planning section times, for results that do not name it.
PLAN_COST = "offload.scheduler.generated.plan_cost"


def planning_targets(results: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    planning = summarize_planning(results["planning"]) if results.get("planning") else None
    if planning:
        target = [r for r in planning.rows if r[0] == TARGETS.plan_nodes]
        measured = (
            f"{target[0][1]:.2f} s, {target[0][2] / MIB:.0f} MiB"
            if target and target[0][1] is not None and target[0][2] is not None
            else "-"
        )
        runs = [r for r in results["planning"]["runs"] if r["nodes"] == TARGETS.plan_nodes]
        if runs and runs[0].get("compiled_moves_seconds") and measured != "-":
            measured += f" compiled (interpreted {runs[0].get('input_moves_seconds', 0):.2f} s)"
        lines.append(
            f"| planning {TARGETS.plan_nodes:,} nodes (with input moves) on {planning.machines} "
            f"machines in < {TARGETS.plan_seconds:g} s and < 1 GiB | {measured} | "
            f"{planning.verdict} |"
        )
    return lines


def planning_body(results: Mapping[str, Any], _plots: Mapping[str, str]) -> list[str]:
    planning = summarize_planning(results["planning"]) if results.get("planning") else None
    lines: list[str] = []
    if planning:
        lines += [
            "",
            "## Scheduler cost",
            "",
            (
                f"Planning (simulating the whole schedule of) generated layered graphs on "
                f"{planning.machines} simulated machines, no building: "
                f"`{results['planning'].get('function', PLAN_COST)}`. "
                "Time from an untraced run, peak memory from a second run under tracemalloc. "
                "That run has no transfer costs; `offload build` plans with input moves "
                "(`InputMoves`), which scores every eligible machine per placement: the fourth "
                "column times that (`bench.plan_moves`). The fifth times it again with "
                "offload built compiled (`setup.py` with `OFFLOAD_USE_MYPYC=1`: mypyc, the same "
                "source and decisions), as the Nix package builds it; the target is judged on "
                "that column where it was measured, else on the one before."
            ),
            "",
            (
                "| nodes | time (s) | peak memory (MiB) | with input moves (s) "
                "| compiled, with input moves (s) | status |"
            ),
            "|---|---|---|---|---|---|",
        ]
        lines.extend(_row(run) for run in results["planning"]["runs"])
        lines += ["", f"Status: {planning.verdict}.", *_compiled_errors(results["planning"])]
    return lines


def _compiled_errors(section: Mapping[str, Any]) -> list[str]:
    """Why the compiled column is empty where it failed: the build, or a size's run."""
    said = [("the compiled build", section.get("compiled_error"))]
    said += [
        (f"{int(r['nodes']):,} nodes compiled", r.get("compiled_error")) for r in section["runs"]
    ]
    lines = [f"- {what} failed: {' '.join(str(why).split())}" for what, why in said if why]
    return ["", *lines] if lines else []


def _row(run: Mapping[str, Any]) -> str:
    def cell(key: str, scale: float = 1.0, digits: int = 2) -> str:
        value = run.get(key)
        return "-" if value is None else f"{float(value) / scale:.{digits}f}"

    return (
        f"| {int(run['nodes']):,} | {cell('seconds')} | {cell('peak_bytes', MIB, 1)} | "
        f"{cell('input_moves_seconds')} | {cell('compiled_moves_seconds')} | {run['status']} |"
    )
