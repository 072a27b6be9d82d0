"""docs/BENCHMARKS.md and its plots, from one results JSON written by ``bench/run.py``.

The model: every measured run is kept raw in the results file (``status`` "ok", "failed" or
"timeout", wall seconds, builds per machine, bytes). Here the runs are reduced to medians and
min-max ranges over the *successful* runs, ratios are taken per run (wall / lower bound) and per
repetition pair (Nix's wall / offload's wall of the same repetition, both successful), and each
figure is compared with its target from the issues. A target is met only when offload succeeded
in every run and its median meets it; anything else is marked "NOT YET" with the reason, so the
document never reads better than the measurements.

Everything but ``write_report``/``main`` is pure. The plots are small hand-written SVGs (no
plotting dependency for a handful of points and lines).

Command line: ``python bench/report.py bench/results/DATE.json [--doc docs/BENCHMARKS.md]``.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import os
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.report_clients import clients_lines
from bench.report_hook import hook_rows, hook_section, hook_target_lines
from bench.report_model import model_lines
from bench.sections import keep_sections
from bench.stats import Run, Spread, paired_ratios, spread, walls
from bench.stats import count_ok as _count
from bench.stats import text as _text

__all__ = [
    "TARGETS",
    "CopySummary",
    "GraphSummary",
    "OverheadSummary",
    "PlanningSummary",
    "Spread",
    "graph_series",
    "load_before_builds",
    "main",
    "paired_ratios",
    "render_markdown",
    "spread",
    "summarize_copy",
    "summarize_graph",
    "summarize_overhead",
    "summarize_planning",
    "svg_plot",
    "walls",
    "write_report",
]

GIB = 1 << 30
MIB = 1 << 20


@dataclass(frozen=True)
class Targets:
    graph_lb_ratio: float = 1.25  # issue 4: offload within 1.25x the lower bound
    graph_speedup: float = 1.5  # issue 4: offload at least 1.5x faster than Nix's hook
    overhead_speedup: float = 10.0  # issue 5: 100 trivial derivations at least 10x faster
    copy_ratio: float = 2.0  # issue 5: closure copy within 2x of nix-copy-closure
    plan_nodes: int = 50_000  # issue 6: planning this many nodes ...
    plan_seconds: float = 5.0  # ... in under 5 s
    plan_bytes: int = GIB  # ... and 1 GiB


TARGETS = Targets()


def _failures(runs: Sequence[Run], tool: str) -> list[str]:
    out = []
    for r in runs:
        if r["tool"] == tool and r["status"] != "ok":
            first = (str(r.get("error") or "").strip().splitlines() or ["(no message)"])[-1]
            out.append(f"rep {r['rep']}: {r['status']}: {first[:160]}")
    return out


@dataclass(frozen=True)
class GraphSummary:
    shape: str
    nodes: int
    lower_bound: float
    critical_path: float
    total_work: float
    nix: Spread | None
    offload: Spread | None
    nix_ratio: Spread | None
    offload_ratio: Spread | None
    speedup: Spread | None  # Nix wall / offload wall, per repetition
    nix_ok: tuple[int, int]
    offload_ok: tuple[int, int]
    meets: bool
    verdict: str
    planned: float | None = None  # offload's policy, exact durations, no overheads (simulated)


def summarize_graph(graph: Mapping[str, Any], targets: Targets = TARGETS) -> GraphSummary:
    runs: list[Run] = graph["runs"]
    lb = float(graph["lower_bound"])
    nix, off = walls(runs, "nix"), walls(runs, "offload")
    offload_ok = _count(runs, "offload")
    off_ratio = spread([w / lb for w in off]) if lb > 0 else None
    speedup = spread(paired_ratios(runs, "nix", "offload"))
    reasons = []
    if offload_ok[0] == 0:
        reasons.append(f"offload failed in all {offload_ok[1]} runs")
    else:
        if offload_ok[0] < offload_ok[1]:
            reasons.append(
                f"offload failed in {offload_ok[1] - offload_ok[0]} of {offload_ok[1]} runs"
            )
        if off_ratio is None or off_ratio.median > targets.graph_lb_ratio:
            reasons.append(f"offload/lower bound {_text(off_ratio)} > {targets.graph_lb_ratio:g}x")
        if speedup is None or speedup.median < targets.graph_speedup:
            reasons.append(f"speedup over Nix {_text(speedup)} < {targets.graph_speedup:g}x")
    meets = not reasons
    return GraphSummary(
        shape=str(graph["shape"]),
        nodes=int(graph["nodes"]),
        lower_bound=lb,
        critical_path=float(graph["critical_path"]),
        total_work=float(graph["total_work"]),
        nix=spread(nix),
        offload=spread(off),
        nix_ratio=spread([w / lb for w in nix]) if lb > 0 else None,
        offload_ratio=off_ratio,
        speedup=speedup,
        nix_ok=_count(runs, "nix"),
        offload_ok=offload_ok,
        meets=meets,
        verdict="meets target" if meets else "**NOT YET**: " + "; ".join(reasons),
        planned=float(graph["planned_s"]) if graph.get("planned_s") is not None else None,
    )


@dataclass(frozen=True)
class OverheadSummary:
    derivations: int
    nix: Spread | None
    offload: Spread | None
    local: Spread | None
    speedup: Spread | None
    counts: Mapping[str, tuple[int, int]]
    meets: bool
    verdict: str


def summarize_overhead(section: Mapping[str, Any], targets: Targets = TARGETS) -> OverheadSummary:
    runs: list[Run] = section["runs"]
    speedup = spread(paired_ratios(runs, "nix", "offload"))
    ok, total = _count(runs, "offload")
    reasons = []
    if ok == 0:
        reasons.append(f"offload failed in all {total} runs")
    else:
        if ok < total:
            reasons.append(f"offload failed in {total - ok} of {total} runs")
        if speedup is None or speedup.median < targets.overhead_speedup:
            reasons.append(f"speedup over Nix {_text(speedup)} < {targets.overhead_speedup:g}x")
    return OverheadSummary(
        derivations=int(section["derivations"]),
        nix=spread(walls(runs, "nix")),
        offload=spread(walls(runs, "offload")),
        local=spread(walls(runs, "local")),
        speedup=speedup,
        counts={tool: _count(runs, tool) for tool in ("nix", "offload", "local")},
        meets=not reasons,
        verdict="meets target" if not reasons else "**NOT YET**: " + "; ".join(reasons),
    )


@dataclass(frozen=True)
class CopyVariant:
    compress: bool
    nix: Spread | None
    offload: Spread | None
    ratio: Spread | None  # offload wall / nix-copy-closure wall, per repetition
    nix_wire: Spread | None  # bytes ssh sent
    offload_wire: Spread | None
    counts: Mapping[str, tuple[int, int]]


@dataclass(frozen=True)
class CopySummary:
    total_bytes: int
    variants: tuple[CopyVariant, ...]
    meets: bool
    verdict: str


def summarize_copy(section: Mapping[str, Any], targets: Targets = TARGETS) -> CopySummary:
    variants = []
    reasons = []
    for compress in (False, True):
        runs = [r for r in section["runs"] if bool(r.get("compress")) == compress]
        if not runs:
            continue
        ratio = spread(paired_ratios(runs, "offload", "nix"))
        ok, total = _count(runs, "offload")
        label = "compressed" if compress else "uncompressed"

        def wire(tool: str, runs: list[Run] = runs) -> Spread | None:
            return spread(
                [
                    float(r["wire_sent"])
                    for r in runs
                    if r["tool"] == tool and r["status"] == "ok" and r.get("wire_sent") is not None
                ]
            )

        variants.append(
            CopyVariant(
                compress,
                spread(walls(runs, "nix")),
                spread(walls(runs, "offload")),
                ratio,
                wire("nix"),
                wire("offload"),
                {tool: _count(runs, tool) for tool in ("nix", "offload")},
            )
        )
        if ok < total:
            reasons.append(f"{label}: offload failed in {total - ok} of {total} runs")
        if ok and (ratio is None or ratio.median > targets.copy_ratio):
            reasons.append(
                f"{label}: offload/nix-copy-closure {_text(ratio)} > {targets.copy_ratio:g}x"
            )
    if not variants:
        reasons.append("no copy was measured")
    return CopySummary(
        total_bytes=int(section.get("bytes", 0)),
        variants=tuple(variants),
        meets=not reasons,
        verdict="meets target" if not reasons else "**NOT YET**: " + "; ".join(reasons),
    )


@dataclass(frozen=True)
class PlanningSummary:
    machines: int
    rows: tuple[tuple[int, float | None, int | None, str], ...]  # nodes, s, peak bytes, status
    meets: bool
    verdict: str


def summarize_planning(section: Mapping[str, Any], targets: Targets = TARGETS) -> PlanningSummary:
    rows = []
    target_row = None
    for r in section["runs"]:
        row = (
            int(r["nodes"]),
            None if r.get("seconds") is None else float(r["seconds"]),
            None if r.get("peak_bytes") is None else int(r["peak_bytes"]),
            str(r["status"]),
        )
        rows.append(row)
        if row[0] == targets.plan_nodes:
            target_row = row
    reasons = []
    if target_row is None:
        reasons.append(f"{targets.plan_nodes:,} nodes not measured")
    elif target_row[3] != "ok" or target_row[1] is None or target_row[2] is None:
        reasons.append(f"planning {targets.plan_nodes:,} nodes {target_row[3]}")
    else:
        if target_row[1] >= targets.plan_seconds:
            reasons.append(f"{target_row[1]:.2f} s >= {targets.plan_seconds:g} s")
        if target_row[2] >= targets.plan_bytes:
            reasons.append(f"{target_row[2] / MIB:.0f} MiB >= {targets.plan_bytes / MIB:.0f} MiB")
    return PlanningSummary(
        machines=int(section.get("machines", 0)),
        rows=tuple(rows),
        meets=not reasons,
        verdict="meets target" if not reasons else "**NOT YET**: " + "; ".join(reasons),
    )


# --- plots -------------------------------------------------------------------------------------

_W, _H = 640, 360
_LEFT, _RIGHT, _TOP, _BOTTOM = 60, 150, 40, 50
_COLOURS = {"nix": "#d95f02", "offload": "#1b9e77"}
_LABELS = {"nix": "Nix hook", "offload": "offload", "local": "local only"}


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * exp >= value:
            return float(step * exp)
    return float(10 * exp)


def svg_plot(title: str, lower_bound: float, series: Mapping[str, Sequence[float | None]]) -> str:
    """Wall time per repetition for each tool against the lower bound and the 1.25x target.

    ``series`` maps a tool to its walls by repetition; None marks a failed run (an x on the
    axis). Pure: returns the SVG text.
    """
    reps = max((len(v) for v in series.values()), default=0)
    values = [v for vs in series.values() for v in vs if v is not None]
    top = _nice_max(max([*values, lower_bound * TARGETS.graph_lb_ratio]) * 1.1)
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def x(rep: int) -> float:
        return _LEFT + (plot_w * (rep + 0.5) / reps if reps else plot_w / 2)

    def y(value: float) -> float:
        return _TOP + plot_h * (1 - value / top)

    out = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
            f'viewBox="0 0 {_W} {_H}" font-family="sans-serif" font-size="12">'
        ),
        f'<rect width="{_W}" height="{_H}" fill="white"/>',
        (
            f'<text x="{_W / 2:.0f}" y="22" text-anchor="middle" font-size="14">'
            f"{html.escape(title)}</text>"
        ),
        f'<line x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{_TOP + plot_h}" stroke="black"/>',
        (
            f'<line x1="{_LEFT}" y1="{_TOP + plot_h}" x2="{_LEFT + plot_w}" y2="{_TOP + plot_h}" '
            'stroke="black"/>'
        ),
        (
            f'<text x="16" y="{_TOP + plot_h / 2:.0f}" text-anchor="middle" '
            f'transform="rotate(-90 16 {_TOP + plot_h / 2:.0f})">wall time (s)</text>'
        ),
        f'<text x="{_LEFT + plot_w / 2:.0f}" y="{_H - 12}" text-anchor="middle">repetition</text>',
    ]
    for i in range(6):
        value = top * i / 5
        out.append(
            f'<line x1="{_LEFT - 4}" y1="{y(value):.1f}" x2="{_LEFT + plot_w}" y2="{y(value):.1f}" '
            f'stroke="#ddd"/><text x="{_LEFT - 8}" y="{y(value) + 4:.1f}" '
            f'text-anchor="end">{value:g}</text>'
        )
    out.extend(
        f'<text x="{x(rep):.1f}" y="{_TOP + plot_h + 18}" text-anchor="middle">{rep + 1}</text>'
        for rep in range(reps)
    )
    for value, label, dash in (
        (lower_bound, "lower bound", "6 4"),
        (lower_bound * TARGETS.graph_lb_ratio, f"{TARGETS.graph_lb_ratio:g}x bound", "2 3"),
    ):
        out.append(
            f'<line x1="{_LEFT}" y1="{y(value):.1f}" x2="{_LEFT + plot_w}" y2="{y(value):.1f}" '
            f'stroke="black" stroke-dasharray="{dash}"/>'
            f'<text x="{_LEFT + plot_w + 6}" y="{y(value) + 4:.1f}">{label} {value:.1f} s</text>'
        )
    # The legend sits at the top of the right margin; the bound lines are labelled lower down
    # (every tool is slower than the bound, so the axis top is well above them).
    legend_y = _TOP - 50
    for tool, walls_by_rep in series.items():
        colour = _COLOURS.get(tool, "#7570b3")
        points = [(x(i), y(v)) for i, v in enumerate(walls_by_rep) if v is not None]
        if len(points) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}"/>')
        out.extend(
            f'<circle cx="{px:.1f}" cy="{py:.1f}" r="4" fill="{colour}"/>' for px, py in points
        )
        for i, v in enumerate(walls_by_rep):
            if v is None:  # a failed or timed-out run, drawn on the axis
                cx, cy = x(i), _TOP + plot_h
                out.append(
                    f'<path d="M{cx - 5:.1f},{cy - 5:.1f} l10,10 m0,-10 l-10,10" '
                    f'stroke="{colour}" stroke-width="2"/>'
                )
        out.append(
            f'<rect x="{_W - _RIGHT + 10}" y="{legend_y + 50}" width="10" height="10" '
            f'fill="{colour}"/><text x="{_W - _RIGHT + 26}" y="{legend_y + 59}">'
            f"{html.escape(_LABELS.get(tool, tool))}</text>"
        )
        legend_y += 18
    out.append(
        f'<text x="{_W - _RIGHT + 10}" y="{legend_y + 59}" font-size="10">x = failed run</text>'
    )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def graph_series(graph: Mapping[str, Any]) -> dict[str, list[float | None]]:
    """Each tool's walls by repetition (None for a failed run), for ``svg_plot``."""
    out: dict[str, list[float | None]] = {}
    for tool in ("nix", "offload"):
        runs = sorted((r for r in graph["runs"] if r["tool"] == tool), key=lambda r: int(r["rep"]))
        out[tool] = [float(r["wall_s"]) if r["status"] == "ok" else None for r in runs]
    return out


# --- markdown ----------------------------------------------------------------------------------


def _bytes(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= MIB:
        return f"{value / MIB:.1f} MiB"
    if value >= 1024:
        return f"{value / 1024:.1f} KiB"
    return f"{value:.0f} B"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _machines_text(runs: Sequence[Run], tool: str) -> str:
    """Builds per machine, summed over the successful runs of ``tool``."""
    total: dict[str, int] = {}
    ok = [r for r in runs if r["tool"] == tool and r["status"] == "ok"]
    for r in ok:
        for machine, count in (r.get("builds") or {}).items():
            total[machine] = total.get(machine, 0) + int(count)
    if not total:
        return "-"
    return ", ".join(f"{m} {round(c / len(ok), 1):g}" for m, c in sorted(total.items()))


def _median_of(runs: Sequence[Run], tool: str, key: str) -> float | None:
    values = [
        float(r[key])
        for r in runs
        if r["tool"] == tool and r["status"] == "ok" and r.get(key) is not None
    ]
    return statistics.median(values) if values else None


def load_before_builds(results: Mapping[str, Any]) -> Spread | None:
    """The 1-minute load average recorded before each build, over all builds of the run."""
    runs = [r for g in results.get("graphs", []) for r in g["runs"]]
    runs += list((results.get("overhead") or {}).get("runs", []))
    return spread([float(r["loadavg_1m_before"]) for r in runs if "loadavg_1m_before" in r])


def _ok(counts: tuple[int, int]) -> str:
    return f"{counts[0]}/{counts[1]}"


def render_markdown(results: Mapping[str, Any], results_name: str, plots: Mapping[str, str]) -> str:
    """The whole of docs/BENCHMARKS.md. ``plots`` maps a shape to its plot's path from docs/."""
    info = results.get("machine", {})
    command = results.get("command", "make bench")
    minutes = float(results.get("duration_s", 0)) / 60
    dirty = " (with uncommitted changes)" if info.get("git_dirty") else ""
    opts = results.get("options", {})
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `bench/report.py` from `bench/results/{results_name}`; do not edit by hand.",
        (
            f"Rerun everything with `{command}` (as root; it brings up its own local fleet and "
            f"stops it). Measured {results.get('started', '?')}; the whole run took "
            f"{minutes:.1f} min."
        ),
        "",
        (
            "Fleet: members `fast` (speed 4), `medium` (speed 2) and `slow` (speed 1), two slots "
            "each, plus the local machine (speed 1, `-j 2`), all on this one host: each member is "
            "an sshd in its own mount namespace with its own store (see design.md). Derivations "
            "sleep `work / speed` seconds, so machines differ in speed while sharing the CPU."
        ),
        (
            "Nix's hook is stock `nix-build --builders @machines -j 2` (Nix "
            f"{info.get('nix_version', '?')}); offload is `offload build` at commit "
            f"`{str(info.get('git_commit', '?'))[:12]}`{dirty}."
        ),
        (
            f"Repetitions: {opts.get('reps', '?')} per tool and graph, alternating the tools, each "
            "with fresh outputs (a new salt). Medians are over successful runs, with min-max in "
            "parentheses; a target counts as met only if offload succeeded in every run."
        ),
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
    ]
    for key, label in (
        ("cpu_model", "CPU"),
        ("cores", "cores"),
        ("memory_gib", "memory (GiB)"),
        ("kernel", "kernel"),
        ("os", "OS"),
        ("nix_version", "Nix"),
        ("python_version", "Python"),
        ("loadavg_start", "load average at start"),
    ):
        lines.append(f"| {label} | {info.get(key, '?')} |")
    load = load_before_builds(results)
    if load is not None:
        lines.append(
            f"| load average (1 min) before each build | median {load.median:.2f}, "
            f"max {load.high:.2f} |"
        )
        cores = int(info.get("cores") or 1)
        # The 1-minute average also counts this benchmark's own previous build; only a load
        # above the core count says that something else was busy too.
        if load.high > cores:
            lines += [
                "",
                (
                    f"Other processes shared this machine during the run (load average above "
                    f"its {cores} cores before some builds); both tools ran under the same "
                    "conditions, alternating."
                ),
            ]
    lines += ["", "## Targets", "", "| target | measured | status |", "|---|---|---|"]

    graphs = [summarize_graph(g) for g in results.get("graphs", [])]
    for g in graphs:
        lines.append(
            f"| {g.shape} ({g.nodes} nodes): offload within {TARGETS.graph_lb_ratio:g}x of the "
            f"lower bound and >= {TARGETS.graph_speedup:g}x faster than Nix's hook "
            f"| offload/bound {_text(g.offload_ratio)}, Nix/offload {_text(g.speedup)} "
            f"| {g.verdict} |"
        )
    overhead = summarize_overhead(results["overhead"]) if results.get("overhead") else None
    if overhead:
        lines.append(
            f"| {overhead.derivations} trivial derivations remote-only: offload >= "
            f"{TARGETS.overhead_speedup:g}x faster than Nix's hook | Nix/offload "
            f"{_text(overhead.speedup)} | {overhead.verdict} |"
        )
    hooked = hook_rows(results)
    lines += hook_target_lines(hooked)
    copy = summarize_copy(results["copy"]) if results.get("copy") else None
    if copy:
        measured = "; ".join(
            f"{'compressed' if v.compress else 'plain'} {_text(v.ratio)}" for v in copy.variants
        )
        lines.append(
            f"| copying a {_bytes(copy.total_bytes)} closure within {TARGETS.copy_ratio:g}x of "
            f"nix-copy-closure | offload/nix-copy-closure {measured or '-'} | {copy.verdict} |"
        )
    planning = summarize_planning(results["planning"]) if results.get("planning") else None
    if planning:
        target = [r for r in planning.rows if r[0] == TARGETS.plan_nodes]
        measured = (
            f"{target[0][1]:.2f} s, {target[0][2] / MIB:.0f} MiB"
            if target and target[0][1] is not None and target[0][2] is not None
            else "-"
        )
        lines.append(
            f"| planning {TARGETS.plan_nodes:,} nodes on {planning.machines} machines in < "
            f"{TARGETS.plan_seconds:g} s and < 1 GiB | {measured} | {planning.verdict} |"
        )

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
            f"| {g.shape} | {g.nodes} | {g.lower_bound:.2f} | {_text(g.nix, 1)} | "
            f"{_text(g.offload, 1)} | {_text(g.nix_ratio)} | {_text(g.offload_ratio)} | "
            f"{_text(g.speedup)} | {g.verdict} |"
            for g in graphs
        )
        for g, raw in zip(graphs, results.get("graphs", []), strict=True):
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
                f"| successful runs | {_ok(g.nix_ok)} | {_ok(g.offload_ok)} |",
                f"| wall time (s) | {_text(g.nix, 1)} | {_text(g.offload, 1)} |",
                f"| wall / lower bound | {_text(g.nix_ratio)} | {_text(g.offload_ratio)} |",
                (
                    f"| builds per machine (mean per run) | {_machines_text(runs, 'nix')} | "
                    f"{_machines_text(runs, 'offload')} |"
                ),
                (
                    f"| bytes sent to members (store growth, median) | "
                    f"{_bytes(_median_of(runs, 'nix', 'store_sent'))} | "
                    f"{_bytes(_median_of(runs, 'offload', 'store_sent'))} |"
                ),
                (
                    "| bytes of outputs back to this machine (store growth, median) | "
                    f"{_bytes(_median_of(runs, 'nix', 'store_received'))} | "
                    f"{_bytes(_median_of(runs, 'offload', 'store_received'))} |"
                ),
                (
                    "| scheduling span: first decision to last build (median s; offload only) "
                    f"| not reported | {_seconds(_median_of(runs, 'offload', 'run_s'))} |"
                ),
                *_plan_row(g),
                (
                    "| bytes sent / received as the tool reports them (median) | not reported | "
                    f"{_bytes(_median_of(runs, 'offload', 'bytes_sent'))} / "
                    f"{_bytes(_median_of(runs, 'offload', 'bytes_received'))} |"
                ),
                "",
                f"Speedup Nix / offload per repetition: {_text(g.speedup)}. Status: {g.verdict}.",
            ]
            for tool, label in (("nix", "Nix hook"), ("offload", "offload")):
                for failure in _failures(runs, tool):
                    lines.append(f"- {label} failed, {failure}")
            if g.shape in plots:
                lines += ["", f"![{g.shape}: wall time vs lower bound]({plots[g.shape]})"]

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
                f"| successful runs | {_ok(overhead.counts['nix'])} | "
                f"{_ok(overhead.counts['offload'])} | {_ok(overhead.counts['local'])} |"
            ),
            (
                f"| wall time (s) | {_text(overhead.nix)} | {_text(overhead.offload)} | "
                f"{_text(overhead.local)} |"
            ),
            (
                f"| builds per machine (mean per run) | {_machines_text(o_runs, 'nix')}"
                f" | {_machines_text(o_runs, 'offload')} | {_machines_text(o_runs, 'local')} |"
            ),
            "",
            f"Speedup Nix / offload: {_text(overhead.speedup)}. Status: {overhead.verdict}.",
        ]
        for tool, label in (("nix", "Nix hook"), ("offload", "offload"), ("local", "local")):
            for failure in _failures(results["overhead"]["runs"], tool):
                lines.append(f"- {label} failed, {failure}")

    lines += hook_section(hooked)
    if copy:
        section = results["copy"]
        lines += [
            "",
            "## Copying a closure",
            "",
            (
                f"{section.get('paths', '?')} store paths of {_bytes(copy.total_bytes)} in all "
                "(half random bytes, half compressible text) copied from this machine to the "
                f"member `{section.get('member', '?')}`, which lacks them each time. Wire bytes "
                "are what ssh reports it sent (`Transferred:`, `LogLevel=VERBOSE`); compression is "
                "ssh's `-C`."
            ),
            "",
            (
                "| | nix-copy-closure (s) | offload (s) | offload / nix-copy-closure | wire bytes "
                "nix-copy-closure | wire bytes offload |"
            ),
            "|---|---|---|---|---|---|",
        ]
        for v in copy.variants:
            lines.append(
                f"| {'compressed' if v.compress else 'uncompressed'} "
                f"(ok {_ok(v.counts['nix'])}, {_ok(v.counts['offload'])}) | {_text(v.nix)} | "
                f"{_text(v.offload)} | {_text(v.ratio)} | "
                f"{_bytes(v.nix_wire.median if v.nix_wire else None)} | "
                f"{_bytes(v.offload_wire.median if v.offload_wire else None)} |"
            )
        lines += ["", f"Status: {copy.verdict}."]
        for tool, label in (("nix", "nix-copy-closure"), ("offload", "offload")):
            for failure in _failures(section["runs"], tool):
                lines.append(f"- {label} failed, {failure}")
        if section.get("offload_copy"):
            lines += ["", f"offload's copy: {section['offload_copy']}."]

    lines += clients_lines(results)
    if planning:
        lines += [
            "",
            "## Scheduler cost",
            "",
            (
                f"Planning (simulating the whole schedule of) generated layered graphs on "
                f"{planning.machines} simulated machines, no building: "
                f"`{results['planning'].get('function', 'offload.scheduler.simulate.plan_cost')}`. "
                "Time from an untraced run, peak memory from a second run under tracemalloc."
            ),
            "",
            "| nodes | time (s) | peak memory (MiB) | status |",
            "|---|---|---|---|",
        ]
        lines.extend(
            f"| {nodes:,} | {'-' if secs is None else f'{secs:.2f}'} | "
            f"{'-' if peak is None else f'{peak / MIB:.1f}'} | {status} |"
            for nodes, secs, peak, status in planning.rows
        )
        lines += ["", f"Status: {planning.verdict}."]
    lines += model_lines(results)
    notes = results.get("notes") or []
    if notes:
        lines += ["", "## Notes", ""]
        lines.extend(f"- {note}" for note in notes)
    return "\n".join(lines) + "\n"


def write_report(results_path: Path, doc: Path) -> list[Path]:
    """Write the plots next to the results file and ``doc``; returns the files written."""
    results = json.loads(results_path.read_text(encoding="utf-8"))
    written = []
    plots: dict[str, str] = {}
    for graph in results.get("graphs", []):
        plot = results_path.with_name(f"{results_path.stem}-{graph['shape']}.svg")
        title = f"{graph['shape']}, {graph['nodes']} nodes: wall time vs lower bound"
        plot.write_text(
            svg_plot(title, float(graph["lower_bound"]), graph_series(graph)), encoding="utf-8"
        )
        written.append(plot)
        plots[graph["shape"]] = os.path.relpath(plot.resolve(), doc.resolve().parent)
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(keep_sections(doc, render_markdown(results, results_path.name, plots)), "utf-8")
    written.append(doc)
    return written


def _plan_row(g: GraphSummary) -> list[str]:
    if g.planned is None or g.lower_bound <= 0:
        return []
    ratio = g.planned / g.lower_bound
    row = "| offload's plan with exact durations and no overheads (simulated) | | "
    return [row + f"{g.planned:.2f} s ({ratio:.2f}x the bound) |"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate docs/BENCHMARKS.md from results.")
    parser.add_argument("results", type=Path, help="bench/results/DATE.json")
    parser.add_argument("--doc", type=Path, default=Path("docs/BENCHMARKS.md"))
    args = parser.parse_args(argv)
    for path in write_report(args.results, args.doc):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
