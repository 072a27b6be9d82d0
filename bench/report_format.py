"""Small text pieces every table of docs/BENCHMARKS.md is made of: bytes, seconds, counts, the
builds per machine, failures, medians of a field over a tool's successful runs.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from bench.stats import Run, Spread, spread

MIB = 1 << 20


def failures(runs: Sequence[Run], tool: str) -> list[str]:
    out = []
    for r in runs:
        if r["tool"] == tool and r["status"] != "ok":
            first = (str(r.get("error") or "").strip().splitlines() or ["(no message)"])[-1]
            out.append(f"rep {r['rep']}: {r['status']}: {first[:160]}")
    return out


def bytes_text(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= MIB:
        return f"{value / MIB:.1f} MiB"
    if value >= 1024:
        return f"{value / 1024:.1f} KiB"
    return f"{value:.0f} B"


def seconds_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def machines_text(runs: Sequence[Run], tool: str) -> str:
    """Builds per machine, summed over the successful runs of ``tool``."""
    total: dict[str, int] = {}
    ok = [r for r in runs if r["tool"] == tool and r["status"] == "ok"]
    for r in ok:
        for machine, count in (r.get("builds") or {}).items():
            total[machine] = total.get(machine, 0) + int(count)
    if not total:
        return "-"
    return ", ".join(f"{m} {round(c / len(ok), 1):g}" for m, c in sorted(total.items()))


def median_of(runs: Sequence[Run], tool: str, key: str) -> float | None:
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


def ok_text(counts: tuple[int, int]) -> str:
    return f"{counts[0]}/{counts[1]}"
