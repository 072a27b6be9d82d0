"""`offload report [RUN] -o FILE`: a run's report as one self-contained HTML page.

The page has a timeline lane per machine (a bar per copy, coloured by phase: waiting,
sending, building, fetching; the critical path outlined; hover for details), the slowest
builds, the biggest transfers and how far the run was from its lower bound. It needs nothing
but a browser: no network, no other file. ``RUN`` is a run id or its start (``offload
history`` lists them); without it, the latest run. ``offload build --report FILE`` writes the
same page at the end of a build.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from offload.history.db import History
from offload.paths import ensure_state_dir
from offload.report import write_report

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "report",
        help="write a run's report: one HTML page with its timeline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run", nargs="?", metavar="RUN", help="run id (default: the latest)")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("report.html"),
        metavar="FILE",
        help="where to write it (default: report.html)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with History(ensure_state_dir() / "history.sqlite") as history:
        model = write_report(history, args.run, args.output)
    builds = sum(len(lane.bars) for lane in model.lanes)
    print(
        f"report of run {model.run.run_id} ({builds} copies on {len(model.lanes)} machines)"
        f" written to {args.output}",
        file=sys.stderr,
    )
    return 0
