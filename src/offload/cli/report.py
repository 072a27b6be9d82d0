"""`offload report [RUN] -o FILE`: a run's report as one self-contained HTML page.

The page has a timeline lane per machine (a bar per copy, coloured by phase: waiting,
sending, building, fetching; the critical path outlined; hover for details), the slowest
builds, the biggest transfers and how far the run was from its lower bound. It needs nothing
but a browser: no network, no other file. ``RUN`` is a run id or its first characters
(``offload history`` shows them); without it, the latest run. ``offload build --report
FILE`` writes the same page at the end of a build.

``--hook`` reports ``offload-hook``'s builds instead (``nix-build``, ``nixos-rebuild``, the
daemon): they are no run, so the page covers its latest burst, back from its newest build until
none ran for 10 minutes, or with ``--since 2h`` the builds that finished in the last two
hours. ``--daemon`` reads the nix-daemon's hook's history (/var/lib/offload, root's).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from offload.cli.arguments import doc_help, nonempty, page_file
from offload.cli.history_file import open_history
from offload.errors import OffloadError
from offload.paths import SYSTEM_STATE_DIR
from offload.report import (
    check_target,
    load_hook_model,
    not_history,
    report_target,
    write_page,
    write_report,
    written,
)
from offload.use import parse_duration

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "report",
        help="write a run's report (or offload-hook's builds'): one HTML page with its timeline",
        description=doc_help(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "run",
        nargs="?",
        type=nonempty("run id"),
        metavar="RUN",
        help="run id, or its first characters (default: the latest)",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=lambda text: report_target(page_file(text)),
        default=Path("report.html"),
        metavar="FILE",
        help="where to write it (default: report.html; -: standard output)",
    )
    parser.add_argument(
        "--hook", action="store_true", help="offload-hook's builds (its latest burst) instead"
    )
    parser.add_argument(
        "--since",
        metavar="DURATION",
        help="offload-hook's builds of the last DURATION (2h; implies --hook)",
    )
    parser.add_argument(
        "--daemon",
        action="store_true",
        help=f"the nix-daemon's offload-hook's builds ({SYSTEM_STATE_DIR}; root's); implies --hook",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    hook = args.hook or args.daemon or args.since is not None
    if hook and args.run is not None:
        raise OffloadError(
            f"'{args.run[:40]}': offload-hook's builds are no run",
            hint="give a run, or --hook (--since, --daemon) for the hook's builds",
        )
    check_target(args.output)  # a page that could not be written is said before no history
    if not hook:
        with open_history(daemon=False, note=False) as history:
            model = write_report(history, args.run, args.output)
        what = f"report of run {model.run.run_id}"
    else:
        since = None if args.since is None else time.time() - parse_duration(args.since, "--since")
        with open_history(daemon=args.daemon, command="report") as h:
            not_history(args.output, h.path)
            model = load_hook_model(h, since)
        write_page(model, args.output)
        what = "report of offload-hook's builds"
        if model.title != "offload-hook builds":  # capped: said (``load_hook_model``)
            what += f" ({model.title.removeprefix('offload-hook builds, ')}; --since for fewer)"
    print(written(model, what, args.output), file=sys.stderr)
    return 0
