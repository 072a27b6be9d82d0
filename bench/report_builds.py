"""The build sections of docs/BENCHMARKS.md: the graphs (targets rows, a summary table, one table
and plot per graph) and the per-build overhead of trivial derivations.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

from bench.report_format import (
    bytes_text,
    failures,
    machines_text,
    median_of,
    ok_text,
    seconds_text,
)
from bench.report_summaries import (
    TARGETS,
    GraphSummary,
    OverheadSummary,
    summarize_graph,
    summarize_overhead,
)
from bench.stats import text


def graph_targets(results: Mapping[str, Any]) -> list[str]:
    return [
        f"| {g.shape} ({g.nodes} nodes): offload within {TARGETS.graph_lb_ratio:g}x of the "
        f"lower bound and >= {TARGETS.graph_speedup:g}x faster than Nix's hook "
        f"| offload/bound {text(g.offload_ratio)}, Nix/offload {text(g.speedup)} "
        f"| {g.verdict} |"
        for g in map(summarize_graph, results.get("graphs", []))
    ]


def graph_body(results: Mapping[str, Any], plots: Mapping[str, str]) -> list[str]:
    graphs = [summarize_graph(g) for g in results.get("graphs", [])]
    lines: list[str] = []
    if graphs:
        lines += [
            "",
            "## Build graphs",
            "",
            (
                "Wall time of the whole command (evaluation included) in seconds. Lower bound = "
                "max(critical path / fastest speed, total work / total capacity) with speeds 4, 2, "
                "1 and local 1, two slots each (capacity 16 work-seconds per second). Every run "
                "also pays once to start (Python, `nix show-config`, evaluation, ssh handshakes "
                "on the shared cores) and to stop, which the bound does not count: offload's "
                "wall time less its scheduling span (in each graph's table) is that cost. Work "
                "is scaled (each graph's scale below) so that it stays a small part of a bound."
            ),
            "",
            (
                "| shape | nodes | lower bound (s) | Nix hook (s) | offload (s) | Nix / bound | "
                "offload / bound | speedup Nix / offload | status |"
            ),
            "|---|---|---|---|---|---|---|---|---|",
        ]
        lines.extend(
            f"| {g.shape} | {g.nodes} | {g.lower_bound:.2f} | {text(g.nix, 1)} | "
            f"{text(g.offload, 1)} | {text(g.nix_ratio)} | {text(g.offload_ratio)} | "
            f"{text(g.speedup)} | {g.verdict} |"
            for g in graphs
        )
        for g, raw in zip(graphs, results.get("graphs", []), strict=True):
            lines += _graph_detail(g, raw, plots)
    return lines


def _graph_detail(g: GraphSummary, raw: Mapping[str, Any], plots: Mapping[str, str]) -> list[str]:
    lines: list[str] = []
    runs = raw["runs"]
    lines += [
        "",
        f"### {g.shape}: {g.nodes} nodes",
        "",
        (
            f"Seed {raw.get('seed')}, scale {raw.get('scale')}; critical path "
            f"{g.critical_path:.1f} s and total work {g.total_work:.1f} s at speed 1; "
            f"lower bound {g.lower_bound:.2f} s."
        ),
        "",
        "| | Nix hook | offload |",
        "|---|---|---|",
        f"| successful runs | {ok_text(g.nix_ok)} | {ok_text(g.offload_ok)} |",
        f"| wall time (s) | {text(g.nix, 1)} | {text(g.offload, 1)} |",
        f"| wall / lower bound | {text(g.nix_ratio)} | {text(g.offload_ratio)} |",
        (
            f"| builds per machine (mean per run) | {machines_text(runs, 'nix')} | "
            f"{machines_text(runs, 'offload')} |"
        ),
        (
            f"| bytes sent to members (store growth, median) | "
            f"{bytes_text(median_of(runs, 'nix', 'store_sent'))} | "
            f"{bytes_text(median_of(runs, 'offload', 'store_sent'))} |"
        ),
        (
            "| bytes of outputs back to this machine (store growth, median) | "
            f"{bytes_text(median_of(runs, 'nix', 'store_received'))} | "
            f"{bytes_text(median_of(runs, 'offload', 'store_received'))} |"
        ),
        (
            "| scheduling span: first decision to last build (median s; offload only) "
            f"| not reported | {seconds_text(median_of(runs, 'offload', 'run_s'))} |"
        ),
        *_plan_row(g),
        (
            "| bytes sent / received as the tool reports them (median) | not reported | "
            f"{bytes_text(median_of(runs, 'offload', 'bytes_sent'))} / "
            f"{bytes_text(median_of(runs, 'offload', 'bytes_received'))} |"
        ),
        "",
        f"Speedup Nix / offload per repetition: {text(g.speedup)}. Status: {g.verdict}.",
    ]
    for tool, label in (("nix", "Nix hook"), ("offload", "offload")):
        for failure in failures(runs, tool):
            lines.append(f"- {label} failed, {failure}")
    if g.shape in plots:
        lines += ["", f"![{g.shape}: wall time vs lower bound]({plots[g.shape]})"]
    return lines


def _plan_row(g: GraphSummary) -> list[str]:
    if g.planned is None or g.lower_bound <= 0:
        return []
    ratio = g.planned / g.lower_bound
    row = "| offload's plan with exact durations and no overheads (simulated) | | "
    return [row + f"{g.planned:.2f} s ({ratio:.2f}x the bound) |"]


def overhead_targets(results: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    overhead = summarize_overhead(results["overhead"]) if results.get("overhead") else None
    if overhead:
        cold = _cold(results, overhead)
        measured, verdict = f"Nix/offload {text(overhead.speedup)}", overhead.verdict
        if cold is not None:
            # A first run pays new connections; only the runs after it find them kept.
            _, speedup = cold
            measured += f" over kept connections; {speedup:.2f} over new ones"
            if speedup < TARGETS.overhead_speedup:
                verdict = f"{verdict} over kept connections; NOT met over new ones"
        lines.append(
            f"| {overhead.derivations} trivial derivations remote-only: offload >= "
            f"{TARGETS.overhead_speedup:g}x faster than Nix's hook | {measured} | {verdict} |"
        )
    return lines


def _cold(
    results: Mapping[str, Any], overhead: OverheadSummary
) -> tuple[list[float], float] | None:
    """offload's walls over new connections (the fixed-costs section's runs of the same
    graph), and Nix's median over their median; None when not measured."""
    cases = (results.get("fixed_costs") or {}).get("cases", {})
    label = f"{overhead.derivations} trivial (-j 0), new connections"
    new = [float(r["wall_s"]) for r in cases.get(label, []) if r.get("status") == "ok"]
    if not new or overhead.nix is None:
        return None
    return new, overhead.nix.median / statistics.median(new)


def _cold_line(results: Mapping[str, Any], overhead: OverheadSummary) -> list[str]:
    """offload's runs here find the ssh connections the run before kept, as a user's next run
    does; the same over new connections, from the fixed-costs section, beside it."""
    found = _cold(results, overhead)
    if found is None:
        return []
    new, speedup = found
    return [
        "",
        (
            "offload's runs here find the ssh connections its run before kept (two idle "
            "minutes, `offload.transport.persist`), as a user's next run does. Over new "
            f"connections (fixed costs below, {len(new)} runs): {statistics.median(new):.2f} s, "
            f"Nix / offload {speedup:.2f}."
        ),
    ]


def overhead_body(results: Mapping[str, Any], _plots: Mapping[str, str]) -> list[str]:
    overhead = summarize_overhead(results["overhead"]) if results.get("overhead") else None
    lines: list[str] = []
    if overhead:
        o_runs = results["overhead"]["runs"]
        lines += [
            "",
            "## Per-build overhead",
            "",
            (
                f"{overhead.derivations} derivations with no inputs and no work, remote-only over "
                "the three members (`-j 0`), against a local-only build as the floor."
            ),
            "",
            "| | Nix hook `-j 0` | offload `-j 0` | local only (nix-build `-j 2`) |",
            "|---|---|---|---|",
            (
                f"| successful runs | {ok_text(overhead.counts['nix'])} | "
                f"{ok_text(overhead.counts['offload'])} | {ok_text(overhead.counts['local'])} |"
            ),
            (
                f"| wall time (s) | {text(overhead.nix)} | {text(overhead.offload)} | "
                f"{text(overhead.local)} |"
            ),
            (
                f"| builds per machine (mean per run) | {machines_text(o_runs, 'nix')}"
                f" | {machines_text(o_runs, 'offload')} | {machines_text(o_runs, 'local')} |"
            ),
            "",
            f"Speedup Nix / offload: {text(overhead.speedup)}. Status: {overhead.verdict}.",
            *_cold_line(results, overhead),
        ]
        for tool, label in (("nix", "Nix hook"), ("offload", "offload"), ("local", "local")):
            for failure in failures(results["overhead"]["runs"], tool):
                lines.append(f"- {label} failed, {failure}")
    return lines
