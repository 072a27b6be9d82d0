"""The ssh-ng part of docs/BENCHMARKS.md: ``offload build`` over ``ssh-ng://`` against itself over
``ssh://`` on the same members (tools ``offload-ng`` and ``offload``, bench/ng.py).

No issue sets a target here: the rows say what speaking Nix's worker protocol to ``nix-daemon
--stdio`` costs or saves against the serve protocol, as medians and per-repetition ratios ng/ssh
(below 1: ssh-ng is faster). Results files from before the tool existed have no such runs and get
no rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.ng import NG_TOOL
from bench.report_format import failures, ok_text
from bench.stats import Run, Spread, count_ok, paired_ratios, spread, text, walls

__all__ = ["NgRow", "ng_body", "ng_rows", "ng_targets"]


@dataclass(frozen=True)
class NgRow:
    label: str
    ssh: Spread | None  # offload build over ssh:// (wall s)
    ng: Spread | None  # offload build over ssh-ng:// (wall s)
    ratio: Spread | None  # ng wall / ssh wall, per repetition where both succeeded
    ssh_ok: tuple[int, int]
    ng_ok: tuple[int, int]
    failures: tuple[str, ...]


def _row(label: str, runs: Sequence[Run]) -> NgRow | None:
    if count_ok(runs, NG_TOOL)[1] == 0:
        return None
    return NgRow(
        label=label,
        ssh=spread(walls(runs, "offload")),
        ng=spread(walls(runs, NG_TOOL)),
        ratio=spread(paired_ratios(runs, NG_TOOL, "offload")),
        ssh_ok=count_ok(runs, "offload"),
        ng_ok=count_ok(runs, NG_TOOL),
        failures=tuple(
            f"{label}: {name} failed, {failure}"
            for tool, name in (("offload", "ssh://"), (NG_TOOL, "ssh-ng://"))
            for failure in failures(runs, tool)
        ),
    )


def ng_rows(results: Mapping[str, Any]) -> list[NgRow]:
    """One row per build measured over both protocols: the graphs, then the trivial ones."""
    rows = [
        _row(f"{g['shape']} ({g['nodes']} nodes)", g["runs"]) for g in results.get("graphs", [])
    ]
    overhead = results.get("overhead")
    if overhead:
        rows.append(_row(f"{overhead['derivations']} trivial derivations", overhead["runs"]))
    return [row for row in rows if row is not None]


def ng_targets(results: Mapping[str, Any]) -> list[str]:
    """Informational rows of the targets table: no target, the ratio as measured."""
    return [
        f"| {row.label}: `offload build` over ssh-ng:// against ssh:// (#17) "
        f"| ng/ssh {text(row.ratio)} | informational, no target |"
        for row in ng_rows(results)
    ]


def ng_body(results: Mapping[str, Any], _plots: Mapping[str, str]) -> list[str]:
    rows = ng_rows(results)
    if not rows:
        return []
    lines = [
        "",
        "## ssh-ng:// against ssh://",
        "",
        (
            "`offload build` with the fleet's machines file as written (`ssh://`, the serve "
            "protocol: `nix-store --serve --write`) and with the same file rewritten to "
            "`ssh-ng://` (Nix's worker protocol to `nix-daemon --stdio`), same members, keys and "
            "stores, back to back in each repetition. Wall time in seconds; ng/ssh per "
            "repetition, below 1 means ssh-ng was faster. No target: informational."
        ),
        "",
        "| build | ssh:// (s) | ssh-ng:// (s) | ng / ssh | successful runs ssh, ng |",
        "|---|---|---|---|---|",
    ]
    lines.extend(
        f"| {row.label} | {text(row.ssh, 1)} | {text(row.ng, 1)} | {text(row.ratio)} | "
        f"{ok_text(row.ssh_ok)}, {ok_text(row.ng_ok)} |"
        for row in rows
    )
    for row in rows:
        lines.extend(f"- {failure}" for failure in row.failures)
    return lines
