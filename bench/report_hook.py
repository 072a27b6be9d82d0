"""The hook part of docs/BENCHMARKS.md: ``nix-build`` with ``offload-hook`` against Nix's own.

Both are the same ``nix-build`` command on the same fleet, alternating within each repetition
with ``offload build`` (tool ``hook`` in the results: ``--option build-hook offload-hook``;
tool ``nix``: Nix's stock build-remote). Issue #12's targets: at least 1.3x faster than Nix's
hook on every graph, at least 5x on the trivial derivations, per-repetition ratios, medians.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.stats import Spread, count_ok, paired_ratios, spread, text, walls

__all__ = [
    "HOOK_GRAPH_SPEEDUP",
    "HOOK_TRIVIAL_SPEEDUP",
    "HookRow",
    "hook_rows",
    "hook_section",
    "hook_target_lines",
]

HOOK_GRAPH_SPEEDUP = 1.3
HOOK_TRIVIAL_SPEEDUP = 5.0


@dataclass(frozen=True)
class HookRow:
    label: str
    target: float
    nix: Spread | None
    hook: Spread | None
    speedup: Spread | None  # Nix's hook wall / offload-hook wall, per repetition
    hook_ok: tuple[int, int]
    meets: bool
    verdict: str


def _row(label: str, runs: Sequence[Mapping[str, Any]], target: float) -> HookRow | None:
    ok, total = count_ok(runs, "hook")
    if total == 0:
        return None
    speedup = spread(paired_ratios(runs, "nix", "hook"))
    reasons = []
    if ok < total:
        reasons.append(f"offload-hook failed in {total - ok} of {total} runs")
    if speedup is None or speedup.median < target:
        reasons.append(f"speedup over Nix's hook {text(speedup)} < {target:g}x")
    return HookRow(
        label=label,
        target=target,
        nix=spread(walls(runs, "nix")),
        hook=spread(walls(runs, "hook")),
        speedup=speedup,
        hook_ok=(ok, total),
        meets=not reasons,
        verdict="meets target" if not reasons else "**NOT YET**: " + "; ".join(reasons),
    )


def hook_rows(results: Mapping[str, Any]) -> list[HookRow]:
    rows = [
        _row(f"{g['shape']} ({g['nodes']} nodes)", g["runs"], HOOK_GRAPH_SPEEDUP)
        for g in results.get("graphs", [])
    ]
    overhead = results.get("overhead")
    if overhead:
        label = f"{overhead['derivations']} trivial derivations remote-only"
        rows.append(_row(label, overhead["runs"], HOOK_TRIVIAL_SPEEDUP))
    return [row for row in rows if row is not None]


def hook_target_lines(rows: Sequence[HookRow]) -> list[str]:
    return [
        f"| {row.label}: `nix-build` with offload-hook >= {row.target:g}x faster than with "
        f"Nix's hook | Nix/offload-hook {text(row.speedup)} | {row.verdict} |"
        for row in rows
    ]


def hook_section(rows: Sequence[HookRow]) -> list[str]:
    if not rows:
        return []
    lines = [
        "",
        "## offload-hook inside nix-build",
        "",
        (
            "The same graphs and trivial derivations, built by the same `nix-build` command "
            "with `--option build-hook offload-hook` (its coordinator started by the first "
            "hook, its history shared with the `offload build` runs before it) and with Nix's "
            "own hook, alternating in each repetition. Wall time in seconds."
        ),
        "",
        "| build | Nix's hook (s) | offload-hook (s) | speedup | successful runs | status |",
        "|---|---|---|---|---|---|",
    ]
    lines.extend(
        f"| {row.label} | {text(row.nix, 1)} | {text(row.hook, 1)} | {text(row.speedup)} | "
        f"{row.hook_ok[0]}/{row.hook_ok[1]} | {row.verdict} |"
        for row in rows
    )
    return lines
