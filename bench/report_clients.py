"""The clients part of docs/BENCHMARKS.md: two and three clients at once on the fleet, each as
if on a host of its own, with ``offload build`` and with Nix's own hook (``bench/clients.py``).

Per number of clients and tool: successful runs, each client's median wall time, the slowest
client's, and the most builds that ran at once on each member (over every run, from the stamps
the builds wrote there) against its slots. Issue #15's acceptance: with offload a member never
runs more builds than its slots; Nix's hook, counting only its own host's slots, is expected to
exceed them. A results file without the section renders as "n/a".
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.stats import Spread, spread, text

__all__ = ["ClientsRow", "clients_lines", "clients_rows"]

LABELS = {"nix": "Nix's hook", "offload": "offload"}


@dataclass(frozen=True)
class ClientsRow:
    clients: int
    tool: str
    ok: tuple[int, int]  # successful runs (every client built everything), runs
    client_walls: tuple[float | None, ...]  # per client: median wall of its successful runs
    slowest: Spread | None  # the slowest client's wall, over the successful runs
    peak: dict[str, int]  # per member: most builds at once over every run
    over: int  # runs in which some member ran more builds than its slots
    unfinished: int  # builds started without an end stamp, over every run
    stopped: int = 0  # of those, the ones whose process was seen gone (their end is known)
    late: int = 0  # of those, the ones gone before their start was read (their end is a bound)


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _row(
    count: int, tool: str, runs: Sequence[Mapping[str, Any]], slots: Mapping[str, int]
) -> ClientsRow | None:
    mine = [r for r in runs if r["clients"] == count and r["tool"] == tool]
    if not mine:
        return None
    ok = [r for r in mine if r["status"] == "ok"]
    walls = [
        _median(
            [
                float(c["wall_s"])
                for r in mine
                for c in r["per_client"]
                if c["client"] == i and c["status"] == "ok"
            ]
        )
        for i in range(count)
    ]
    peak: dict[str, int] = {}
    for r in mine:
        for member, n in r["peak"].items():
            peak[member] = max(peak.get(member, 0), int(n))
    over = sum(1 for r in mine if any(int(n) > slots.get(m, 0) for m, n in r["peak"].items()))
    return ClientsRow(
        count,
        tool,
        (len(ok), len(mine)),
        tuple(walls),
        spread([float(r["wall_s"]) for r in ok]),
        peak,
        over,
        sum(int(n) for r in mine for n in r.get("unfinished", {}).values()),
        sum(int(n) for r in mine for n in r.get("stopped", {}).values()),
        sum(int(r.get("stopped_late", 0)) for r in mine),
    )


def clients_rows(section: Mapping[str, Any]) -> list[ClientsRow]:
    """One row per number of clients and tool, in the order measured."""
    runs = section.get("runs", [])
    slots = section.get("slots", {})
    keys = dict.fromkeys((int(r["clients"]), str(r["tool"])) for r in runs)
    return [row for key in keys if (row := _row(*key, runs, slots)) is not None]


def _walls(row: ClientsRow) -> str:
    return ", ".join("-" if w is None else f"{w:.1f}" for w in row.client_walls)


def _peaks(row: ClientsRow, slots: Mapping[str, int]) -> str:
    return ", ".join(f"{m} {row.peak.get(m, 0)}/{n}" for m, n in slots.items())


def _verdict(rows: Sequence[ClientsRow]) -> str:
    mine = [r for r in rows if r.tool == "offload"]
    if not mine:
        return "n/a (no offload runs)"
    reasons = [
        f"{r.clients} clients: a member ran more builds than its slots in {r.over} of "
        f"{r.ok[1]} runs"
        for r in mine
        if r.over
    ]
    reasons += [
        f"{r.clients} clients: {r.ok[1] - r.ok[0]} of {r.ok[1]} runs failed"
        for r in mine
        if r.ok[0] < r.ok[1]
    ]
    return "NOT YET: " + "; ".join(reasons) if reasons else "met"


def clients_lines(results: Mapping[str, Any]) -> list[str]:
    lines = ["", "## Many clients, one fleet", ""]
    section = results.get("clients")
    if not section:
        return [*lines, "n/a: this results file has no `clients` section."]
    slots: Mapping[str, int] = section.get("slots", {})
    rows = clients_rows(section)
    lines += [
        (
            "Two and three clients start together (a barrier), each as if on a host of its own "
            "(its own `current-load` and state directory, in a mount namespace), each building "
            f"its own graph ({section.get('graph', '?')}) remote-only (`-j 0`) onto the fleet: "
            "`nix-build --builders @machines` (Nix's hook) against `offload build`. Peaks are "
            "the most builds running at once on a member over every run, from start and end "
            "stamps the builds wrote there, against its slots. The fleet's builds sleep, so a "
            "member running more builds than its slots does not slow them here (a real builder "
            "would share its cores between them): the wall times show waiting and overhead, not "
            "that slow-down (the simulator's model of many clients, `offload.scheduler.clients`, "
            "has it)."
        ),
        "",
        (
            "| clients | tool | successful runs | wall per client (s, median) | "
            "slowest client (s) | peak builds at once / slots |"
        ),
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.clients} | {LABELS.get(r.tool, r.tool)} | {r.ok[0]}/{r.ok[1]} | {_walls(r)} | "
        f"{text(r.slowest, 1)} | {_peaks(r, slots)} |"
        for r in rows
    ]
    nix_over = [r for r in rows if r.tool == "nix" and r.over]
    lines += [
        "",
        (
            "Target (issue #15): with offload no member runs more builds than its slots. "
            f"Status: {_verdict(rows)}."
        ),
    ]
    lines += [
        f"- Nix's hook, {r.clients} clients: a member ran more builds than its slots in "
        f"{r.over} of {r.ok[1]} runs."
        for r in nix_over
    ]
    stopped = sum(r.stopped for r in rows)
    if stopped:
        lines.append(
            f"- {stopped} builds were stopped before their end (offload's losing second copies, "
            f"waiting copies moved, stopped runs); {_stopped_end(section, rows)}"
        )
    unfinished = sum(r.unfinished for r in rows)
    if unfinished:
        lines.append(
            f"- {unfinished} builds started without an end stamp (killed: offload's losing "
            "second copies, stopped runs); each counts as running until the run's last stamp."
        )
    return lines + _failures(section.get("runs", []))


def _stopped_end(section: Mapping[str, Any], rows: Sequence[ClientsRow]) -> str:
    """How the end of a build stopped before its end stamp was known, as these runs knew it."""
    if not all("stopped_late" in r for r in section.get("runs", [])):
        # Recorded before the bench waited on a pidfd per build.
        return (
            "each counts as running until its process was seen gone on the member (polled "
            "every 0.05 s)."
        )
    late = sum(r.late for r in rows)
    return "each counts as running until its process exited (the bench waits on it)" + (
        f"; {late} of them ended before the bench read their start stamp and count until it "
        "found them gone."
        if late
        else "."
    )


def _failures(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per client that did not build everything, with the last line of its error."""
    lines = []
    for run in runs:
        for client in run["per_client"]:
            if client["status"] != "ok":
                last = (client.get("error") or "?").strip().splitlines()[-1:] or ["?"]
                lines.append(
                    f"- {LABELS.get(run['tool'], run['tool'])}, {run['clients']} clients, rep "
                    f"{run['rep'] + 1}, client {client['client'] + 1}: {client['status']}: "
                    f"{last[0]}"
                )
    return lines
