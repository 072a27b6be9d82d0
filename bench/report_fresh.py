"""The bench's section on freshly drawn seeds (``bench/fresh.py``): each graph's optimum and
offload's first and second runs and Nix's hook against it, with the issue's targets."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from bench.fresh import ratios, shape_medians
from bench.verdicts import NOT_MET, Judged, judge

__all__ = ["TARGETS", "fresh_lines", "fresh_targets", "judged_runs"]

# Most a run may take, as a multiple of the optimum; Nix's hook at least NIX_SPEEDUP x slower
# than offload's first run wherever it takes NIX_ROOM x the optimum or more.
TARGETS = {"first": 1.15, "second": 1.08}
NIX_ROOM, NIX_SPEEDUP = 2.2, 2.0


def _x(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}x"


def judged_runs(graphs: Sequence[Mapping[str, Any]], run: str) -> Judged | None:
    """The median over ``graphs`` of ``run``'s wall against each graph's optimum, judged as
    ``bench/verdicts`` does (against the schedule found and the bound); a run that failed is
    NOT met whatever the others did, as every target of the report is. None: no such run."""
    mine = [r for graph in graphs for r in graph["runs"] if r["run"] == run]
    if not mine:
        return None
    triples = [
        (float(r["wall_s"]), float(graph["optimum"]["makespan"]), _bound(graph))
        for graph in graphs
        for r in graph["runs"]
        if r["run"] == run and r["status"] == "ok"
    ]
    if len(triples) < len(mine):
        return Judged(math.inf, math.inf, NOT_MET)
    return judge(triples, TARGETS[run], statistics.median)


def _bound(graph: Mapping[str, Any]) -> float:
    """What the optimum is proven to be at least: the solver's bound (a results file older
    than the bound has none: its makespan, as it was judged then)."""
    best = graph["optimum"]
    return float(best.get("bound", best["makespan"]))


def _judged(graphs: Sequence[Mapping[str, Any]]) -> dict[str, Judged]:
    """``judged_runs`` of each run with a target that ``graphs`` have."""
    found = {run: judged_runs(graphs, run) for run in TARGETS}
    return {run: judged for run, judged in found.items() if judged is not None}


def _verdicts(judged: Mapping[str, Judged], found: Mapping[str, float | None]) -> list[str]:
    out = [f"{run} {verdict.verdict}" for run, verdict in judged.items()]
    nix, speedup = found["nix/optimum"], found["nix/first"]
    if nix is not None and nix >= NIX_ROOM and speedup is not None:
        out.append(f"vs Nix {'met' if speedup >= NIX_SPEEDUP else 'NOT met'}")
    elif nix is not None:
        out.append("vs Nix: no room")
    return out


def _ratio_cells(found: Mapping[str, float | None], digits: int = 2) -> str:
    keys = ("first/optimum", "second/optimum", "nix/optimum", "nix/first", "after-nix/optimum")
    return " | ".join(_x(found[key], digits) for key in keys)


def _row(graph: Mapping[str, Any]) -> str:
    best = graph["optimum"]
    gap = "proven" if best.get("gap") == 0 else f"gap {float(best.get('gap', 0)):.1%}"
    if not best.get("solved"):  # offload's own plan against the lower bound, or the bound
        gap = f"not solved, {gap}" if best.get("gap") else "lower bound (not solved)"
    failed = [f"{r['run']} {r['status']}" for r in graph["runs"] if r["status"] != "ok"]
    return (
        f"| {graph['shape']} | {graph['seed']} | {float(best['makespan']):.2f} ({gap}) | "
        f"{_ratio_cells(ratios(graph))} | {', '.join(failed) or '-'} |"
    )


def _shape_row(section: Mapping[str, Any], shape: str, medians: Mapping[str, float | None]) -> str:
    """A shape's medians, to three decimals (a verdict is on them, not on their rounding), each
    run's also against the bound where that differs, and how many runs failed."""
    graphs = _of_shape(section, shape)
    judged = _judged(graphs)
    failed = sum(run["status"] != "ok" for graph in graphs for run in graph["runs"])
    said = _verdicts(judged, medians) + ([f"{failed} run(s) failed"] if failed else [])
    cells = _ratio_cells(medians, digits=3).split(" | ")
    for i, run in enumerate(TARGETS):
        if run in judged and not math.isinf(judged[run].found):
            cells[i] = judged[run].text(unit="x")
    return f"| {shape} | {len(graphs)} | {' | '.join(cells)} | {', '.join(said) or '-'} |"


def _of_shape(section: Mapping[str, Any], shape: str) -> list[Mapping[str, Any]]:
    return [graph for graph in section["graphs"] if graph["shape"] == shape]


def fresh_targets(results: Mapping[str, Any]) -> list[str]:
    """The targets table's rows: per shape, its first and second runs against the optimum and
    Nix's hook against the first run, judged on the shape's medians."""
    section = results.get("fresh")
    if not section or not section.get("graphs"):
        return []
    rows = []
    for shape, (count, medians) in shape_medians(section).items():
        judged = _judged(_of_shape(section, shape))
        measured = [
            f"{run}/opt " + ("a run failed" if math.isinf(j.found) else j.text(unit="x"))
            for run, j in judged.items()
        ]
        if medians["nix/first"] is not None:
            measured.append(f"Nix/first {medians['nix/first']:.2f}")
        rows.append(
            f"| fresh {shape} ({count} graphs of {section['nodes']} nodes drawn this run, scale "
            f"{float(section['scale']):g}): first run <= {TARGETS['first']:.2f}x the optimum, "
            f"second <= {TARGETS['second']:.2f}x, >= {NIX_SPEEDUP:g}x faster than Nix's hook "
            f"where it takes >= {NIX_ROOM:g}x | {', '.join(measured)} "
            f"| {', '.join(_verdicts(judged, medians))} |"
        )
    return rows


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _split_row(graph: Mapping[str, Any], with_floor: bool) -> str:
    """Optimum, plan, and per offload run its span and its fixed costs (wall less span); with
    the floor, it and each run's wall over it."""
    runs = {r["run"]: r for r in graph["runs"] if r["status"] == "ok"}
    floor = graph.get("floor") or {}
    best = _seconds(float(graph["optimum"]["makespan"]))
    if with_floor:
        best += f" | {_seconds(floor.get('makespan'))}"
    cells, over = [], []
    for name in ("first", "second"):
        run = runs.get(name, {})
        span, wall = run.get("span_s"), run.get("wall_s")
        fixed = None if span is None or wall is None else float(wall) - float(span)
        cells += [_seconds(span), _seconds(fixed)]
        low = floor.get("makespan")
        over.append(_x(float(wall) / float(low) if wall and low else None))
    tail = f" | {' | '.join(over)}" if with_floor else ""
    return (
        f"| {graph['shape']} | {best} | {float(graph['plan_s']):.2f} | {' | '.join(cells)}{tail} |"
    )


def _split_lines(section: Mapping[str, Any]) -> list[str]:
    """Where the time goes; only for results that recorded it (``plan_s``)."""
    graphs = [graph for graph in section["graphs"] if graph.get("plan_s") is not None]
    if not graphs:
        return []
    with_floor = any(graph.get("floor") for graph in graphs)
    header = "| shape | optimum | plan | first span | first fixed | second span | second fixed |"
    if with_floor:
        header = header.replace("optimum |", "optimum | floor |") + " first/floor | second/floor |"
    return [
        "",
        (
            "Where the time goes (seconds): `plan`, offload's own simulated plan with exact "
            "durations (the policy's part of the gap to the optimum); per run its `span`, first "
            "scheduling decision to last build (span less plan: carrying the plan out, per-build "
            "set-up and copies, and on a first run estimates that were off), and `fixed`, wall "
            "less span (start-up: interpreter, evaluation, handshakes; shutdown)."
            + (_floor_words(section) if with_floor else "")
        ),
        "",
        header,
        "|---" * header.count(" | ") + "|---|",
        *(_split_row(graph, with_floor) for graph in graphs),
    ]


def _floor_words(section: Mapping[str, Any]) -> str:
    return (
        " `floor`: the optimum with every build taking "
        f"{float(section['build_cost_s']):.3f} s more, what a trivial build took on the fleet "
        "here from offload's request to Nix's answer (the median over a chain of them): an "
        "estimate of Nix's own cost of a build, which every tool that builds with Nix pays, on "
        "each link of a chain too (`bench/fresh.py`; `-` where the solver found none in time). "
        "The targets stay against the optimum; the floor tells the part of the gap that is "
        "Nix's cost from the part that is scheduling and offload's own."
    )


def _per_shape(section: Mapping[str, Any]) -> str:
    count = int(section.get("seeds_per_shape", 1))
    return "one graph" if count == 1 else f"{count} graphs"


def fresh_lines(results: Mapping[str, Any]) -> list[str]:
    """The section's Markdown lines; none when the results have no ``fresh`` section."""
    section = results.get("fresh")
    if not section or not section.get("graphs"):
        return []
    return [
        "",
        "## Fresh seeds on the real fleet",
        "",
        (
            f"Seeds drawn at {section['drawn']} from {section['seed_source']} (never the same "
            f"twice): {_per_shape(section)} per shape, {section['nodes']} nodes at scale "
            f"{float(section['scale']):g}, built for real. `first`: offload with an empty "
            "history; `second`: again with the first's history, every output rebuilt; `nix`: "
            "stock nix-build with Nix's hook; `after-Nix`: offload with an empty history "
            "again after Nix's hook built the graph, its estimates from Nix's build logs "
            "(no target). Wall time / the optimum (`bench/optimum.py`, "
            f"CP-SAT, {float(section['solver_seconds']):g} s per graph; it pays no start-up, "
            "transfer or per-build cost). Targets: first at most "
            f"{TARGETS['first']:.2f}x, second at most {TARGETS['second']:.2f}x, Nix/first at "
            f"least {NIX_SPEEDUP:g}x where Nix takes {NIX_ROOM:g}x the optimum or more, "
            "judged on each shape's medians (the first table; the second has each graph)."
        ),
        "",
        (
            "| shape | graphs | first/opt | second/opt | Nix/opt | Nix/first | after-Nix/opt "
            "| targets |"
        ),
        "|---|---|---|---|---|---|---|---|",
        *(_shape_row(section, shape, m) for shape, (_, m) in shape_medians(section).items()),
        "",
        "Each graph:",
        "",
        (
            "| shape | seed | optimum (s) | first/opt | second/opt | Nix/opt | Nix/first "
            "| after-Nix/opt | runs failed |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
        *(_row(graph) for graph in section["graphs"]),
        *_split_lines(section),
    ]
