"""`make bench`: offload against Nix's own build hook and against the lower bound, in one run.

Sections (``--only`` picks some):

- ``graphs``: generated build graphs (layered, chain, wide, huge) built as real derivations by
  stock ``nix-build --builders``, by ``offload build`` and by the same ``nix-build`` with
  ``--option build-hook offload-hook``, alternating, fresh outputs each time;
- ``overhead``: 100 trivial derivations remote-only (``-j 0``) by the same three, plus a
  local-only floor; these and the layered graph also by ``offload build`` over ``ssh-ng://``
  (tool ``offload-ng``, bench/ng.py) against its ``ssh://`` runs;
- ``copy``: a ~200 MB closure to one member, ``nix-copy-closure`` vs offload's serve-protocol copy,
  with and without ssh compression;
- ``clients``: two and three clients at once on the fleet, each as a host of its own, offload
  against Nix's hook: per-client wall and peak builds per member (``bench/clients.py``);
- ``fixed_costs``: where offload's wall time goes beyond the plan (``bench/fixed_costs.py``);
- ``fresh``: seeds drawn anew each run, first and second runs against the optimum
  (``bench/fresh.py``);
- ``planning``: the scheduler's own cost on 1,000-50,000 simulated nodes, no building.

Everything runs on a fleet this script brings up under /tmp and always stops (try/finally, also
on Ctrl-C and SIGTERM, which stops it as Ctrl-C does); offload gets a fresh state directory
there too, so its history starts empty. Raw
measurements go to ``bench/results/<date>.json`` (written after every section, so an
interrupted run keeps what it measured) and ``bench/report.py`` turns them into
docs/BENCHMARKS.md. A failing or timed-out command is a measurement, recorded as such.

``--quick`` (one small graph, one repetition, small overhead and copy sizes) and ``--only`` runs
write to ``$TMPDIR/offload-bench-DATE-quick.json`` (or ``-partial``) instead and leave the doc
alone unless ``--report`` is given; ``--out`` overrides the path. An unfinished run (Ctrl-C, an
error) leaves its measurements in ``<out>.partial``, never over a complete results file.

The sections and their runners are listed in ``FLEET_SECTIONS`` (they build on the fleet) and
``LOCAL_SECTIONS`` (they do not), in the order they run: adding a section is one runner in a
module of its own and one line here, plus its renderer in ``bench/report.py``'s ``PARTS``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in {None, ""}:
    # `python bench/run.py` puts bench/ first on sys.path; the repository root is what we need.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.clients import clients_section
from bench.context import (
    FLEET_SPECS,
    LOCAL_SLOTS,
    LOCAL_SPEED,
    REPO,
    Bench,
    Options,
    Save,
    log,
    make_env,
)
from bench.fixed_costs import fixed_costs_section
from bench.fresh import fresh_section
from bench.machine_info import machine_info
from bench.report import write_report
from bench.sections_build import graph_section, overhead_section
from bench.sections_copy import copy_section
from bench.sections_plan import planning_section, simulate_run
from offload.fleet import MemberSpec, fleet_down, fleet_up
from offload.hook.coordinator import stop_coordinators

# Each section's runner, in the order they run; it returns the section's results.
FLEET_SECTIONS: dict[str, Callable[[Bench, Options, Save], object]] = {
    "graphs": graph_section,
    "overhead": overhead_section,
    "copy": copy_section,
    "clients": lambda b, o, s: clients_section(
        b.fleet, b.work, b.env, reps=o.reps, quick=o.quick, save=s
    ),
    "fixed_costs": fixed_costs_section,
    "fresh": fresh_section,
}
LOCAL_SECTIONS: dict[str, Callable[[Options, Save], object]] = {
    "planning": planning_section,
    "simulate": simulate_run,
}
SECTIONS = (*FLEET_SECTIONS, *LOCAL_SECTIONS)
DEFAULT_SCALE = 4.0


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(description="Benchmark offload against Nix's build hook.")
    parser.add_argument("--quick", action="store_true", help="one small graph, one repetition")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="SECTION",
        help=f"run only these sections ({', '.join(SECTIONS)}; repeatable or comma-separated)",
    )
    parser.add_argument("--reps", type=int, help="repetitions per tool (default 3, quick 1)")
    parser.add_argument(
        "--scale",
        type=float,
        default=DEFAULT_SCALE,
        help=f"multiply every node's work (default {DEFAULT_SCALE:g})",
    )
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results/DATE.json)")
    parser.add_argument(
        "--report",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="regenerate docs/BENCHMARKS.md (default: only for a full run)",
    )
    args = parser.parse_args(argv)
    sections = tuple(s for item in args.only for s in item.split(",") if s) or SECTIONS
    for section in sections:
        if section not in SECTIONS:
            parser.error(f"unknown section {section!r}; choose from {', '.join(SECTIONS)}")
    reps = args.reps if args.reps is not None else (1 if args.quick else 3)
    if reps < 1:
        parser.error("--reps must be at least 1")
    if not args.scale > 0:
        parser.error("--scale must be positive")
    full = not args.quick and not args.only
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    suffix = "" if full else ("-quick" if args.quick else "-partial")
    # Only full runs belong in bench/results (they are committed); others go to the temp dir.
    results_dir = REPO / "bench" / "results" if full else Path(tempfile.gettempdir())
    out = args.out or results_dir / f"{'' if full else 'offload-bench-'}{date}{suffix}.json"
    report = args.report if args.report is not None else full
    return Options(
        sections=sections,
        reps=reps,
        scale=args.scale,
        quick=args.quick,
        out=out,
        doc=REPO / "docs" / "BENCHMARKS.md" if report else None,
        trivial=20 if args.quick else 100,
        copy_mb=20 if args.quick else 200,
    )


def new_results(opts: Options, argv: Sequence[str] | None) -> dict[str, Any]:
    """The results file's head: how the run was started, on what, with which fleet."""
    return {
        "version": 1,
        "command": "make bench"
        if argv is None and len(sys.argv) == 1
        else shlex.join(["python", "bench/run.py", *(sys.argv[1:] if argv is None else argv)]),
        "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "options": {
            "sections": list(opts.sections),
            "reps": opts.reps,
            "scale": opts.scale,
            "quick": opts.quick,
        },
        "machine": machine_info(),
        "fleet": {
            "members": [
                {"name": s.name, "speed": s.speed, "slots": s.jobs}
                for s in map(MemberSpec.parse, FLEET_SPECS)
            ],
            "local": {"speed": LOCAL_SPEED, "slots": LOCAL_SLOTS},
        },
        "notes": [],
        "complete": False,
    }


def saver(opts: Options, results: dict[str, Any], began: float) -> Callable[..., None]:
    """``save(section, value)``: record a section and write the results file (``save()``: write)."""
    # Until the run completes, results go to DATE.json.partial: an interrupted run must not
    # replace a complete results file of the same day.
    partial = opts.out.with_name(opts.out.name + ".partial")

    def save(section: str | None = None, value: object = None) -> None:
        if section is not None:
            results[section] = value
        results["duration_s"] = round(time.monotonic() - began, 1)
        tmp = opts.out.with_name(opts.out.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        tmp.replace(opts.out if results["complete"] else partial)
        if results["complete"]:
            partial.unlink(missing_ok=True)

    return save


def run_sections(opts: Options, results: dict[str, Any], save: Callable[..., None]) -> None:
    """Run the chosen sections, the fleet up around them if any needs it; always stop it."""
    needs_fleet = any(s in opts.sections for s in FLEET_SECTIONS)
    # Short: sshd and ssh limit unix socket path lengths.
    work = Path(tempfile.mkdtemp(prefix="ob", dir="/tmp"))
    fleet_dir = work / "f"
    try:
        if needs_fleet:
            log(f"starting the fleet in {fleet_dir}")
            fleet = fleet_up(fleet_dir, [MemberSpec.parse(s) for s in FLEET_SPECS])
            bench = Bench(fleet, work, make_env(fleet, work))
            for name, fleet_runner in FLEET_SECTIONS.items():
                if name in opts.sections:
                    results[name] = fleet_runner(bench, opts, save)
        for name, runner in LOCAL_SECTIONS.items():
            if name in opts.sections:
                results[name] = runner(opts, save)
        results["complete"] = True
    except KeyboardInterrupt:
        results["notes"].append("interrupted (Ctrl-C or SIGTERM): the results are partial")
        raise
    finally:
        try:
            if needs_fleet:
                log("stopping offload-hook's coordinator and the fleet")
                stop_coordinators(work / "offload-state")
                fleet_down(fleet_dir, purge=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            save()
            partial = opts.out.with_name(opts.out.name + ".partial")
            where = opts.out if results["complete"] else partial
            log(f"results in {where} after {results['duration_s'] / 60:.1f} min")


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    if os.geteuid() != 0:
        print("bench: run as root (the local fleet needs mount namespaces)", file=sys.stderr)
        return 2
    began = time.monotonic()
    results = new_results(opts, argv)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    run_sections(opts, results, saver(opts, results, began))
    if opts.doc is not None:
        for path in write_report(opts.out, opts.doc):
            log(f"wrote {path}")
    return 0


def _stop(signum: int, frame: object) -> None:
    del signum, frame
    raise KeyboardInterrupt  # the fleet and its scratch directory go (``run_sections``)


if __name__ == "__main__":
    # Killed (SIGTERM), it left its fleet's sshd and builds running, and /tmp/ob* behind.
    signal.signal(signal.SIGTERM, _stop)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench: interrupted; the fleet is stopped, partial results kept", file=sys.stderr)
        sys.exit(130)
