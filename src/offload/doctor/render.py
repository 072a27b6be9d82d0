"""The doctor's reports for people: one table row per machine, then each problem and its fix.

Plain padded text like ``offload machines`` (nothing but the report on stdout, so it pipes and
diffs): a column per check holding ``ok``, ``warn``, ``FAIL`` (upper case, to stand out), ``-``
(skipped) or ``?`` (cannot be asked there), and the seconds the machine took. Below the table,
one line per check that is not ok, with its fix on the next; ``verbose`` lists the ok ones too.
"""

from __future__ import annotations

from collections.abc import Sequence

from offload.config.machines import shown
from offload.doctor.model import CHECKS, MachineReport, Verdict

__all__ = ["format_report"]

_CELL = {
    Verdict.OK: "ok",
    Verdict.WARN: "warn",
    Verdict.FAIL: "FAIL",
    Verdict.SKIPPED: "-",
    Verdict.UNKNOWN: "?",
}


def _table(reports: Sequence[MachineReport]) -> list[str]:
    rows = [["MACHINE", *(name.upper() for name in CHECKS), "TIME"]]
    for report in reports:
        cells = []
        for name in CHECKS:
            check = report.check(name)
            cells.append(_CELL[check.verdict] if check is not None else "-")
        rows.append([shown(report.name, 200), *cells, f"{report.seconds:.1f}s"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def format_report(reports: Sequence[MachineReport], *, verbose: bool = False) -> str:
    lines = _table(reports)
    notes = []
    for report in reports:
        # Checks unknown for one reason are told on one line (a restricted builder's).
        unknown: dict[str, list[str]] = {}
        for check in report.checks:
            if check.verdict == Verdict.UNKNOWN:
                unknown.setdefault(check.detail, []).append(check.name)
        for detail, names in unknown.items():
            notes.append(
                f"{shown(report.name, 200)}: {', '.join(names)} unknown: {shown(detail, 2000)}"
            )
        for check in report.checks:
            if check.verdict in {Verdict.SKIPPED, Verdict.UNKNOWN} or (
                check.verdict == Verdict.OK and not verbose
            ):
                continue
            # The detail may quote what a builder or a file said: one line, no escape.
            detail = shown(check.detail, 2000)
            notes.append(f"{shown(report.name, 200)}: {check.name} {check.verdict.value}: {detail}")
            if check.fix:
                notes.append(f"  fix: {shown(check.fix, 2000)}")
    if notes:
        lines += ["", *notes]
    return "".join(f"{line}\n" for line in lines)
