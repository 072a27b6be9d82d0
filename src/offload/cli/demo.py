"""`offload demo`: the main job, on a local fleet.

Brings up a three-member fleet of different speeds (unless one is already running), builds the
bundled sample graph (about 30 derivations, each sleeping ``work / speed`` on the machine that
builds it) through offload over the fleet and the local machine, and prints which machine built
what and how long it took. A fleet the demo started is stopped at the end unless
``--keep-fleet`` is given; a fleet that was already up is left as it was.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

from offload.cli.arguments import FLEET_DIR_HELP, doc_help, nonempty_path
from offload.cli.build_exec import build_failed, execute
from offload.cli.interrupts import steady_runner
from offload.config.pool import load_pool
from offload.dagfile import Dag, load_dag, parse_dag, write_nix_file
from offload.errors import SchedulerError, Unschedulable
from offload.fleet import DEFAULT_SPECS, Fleet, fleet_down, fleet_status, fleet_up, open_fleet
from offload.fleet.spec import default_fleet_dir
from offload.nix import Installables, instantiate
from offload.paths import ensure_state_dir
from offload.threads import interrupts_held
from offload.ui import make_renderer
from offload.ui.events import Event, JobFinished
from offload.ui.summary import render_summary

LOCAL_SLOTS = 2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "demo",
        help="build a sample graph on a local three-member fleet",
        description=doc_help(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dir", type=nonempty_path, help=FLEET_DIR_HELP)
    parser.add_argument("--keep-fleet", action="store_true", help="leave the fleet running")
    parser.add_argument("--graph", type=nonempty_path, help="a DAG JSON file instead of the sample")
    parser.set_defaults(func=run)


def sample_graph() -> Dag:
    text = resources.files("offload").joinpath("data/sample.json").read_text()
    return parse_dag(json.loads(text), source="offload/data/sample.json")


def run(args: argparse.Namespace) -> int:
    # Read first: a graph that cannot be used is said before a fleet is started for it.
    dag = load_dag(args.graph) if args.graph else sample_graph()
    fleet_dir = args.dir or default_fleet_dir(os.environ, Path.home())
    already_up = any(status.running for status in fleet_status(fleet_dir))
    fleet: Fleet = open_fleet(fleet_dir) if already_up else fleet_up(fleet_dir, DEFAULT_SPECS)
    try:
        return _build(fleet, dag)
    finally:
        if not already_up and not args.keep_fleet:
            # A second Ctrl-C while it stops (bounded: stop_member's timeout) must not leave
            # members running, the run stopped already.
            with interrupts_held():
                fleet_down(fleet_dir)
                print(f"fleet stopped (its stores stay in {fleet_dir})", file=sys.stderr)
        else:
            print(f"fleet left running: `offload fleet down --dir {fleet_dir}`", file=sys.stderr)


def _build(fleet: Fleet, dag: Dag) -> int:
    speeds = [(m.spec.speed, m.spec.jobs) for m in fleet.members] + [(1.0, LOCAL_SLOTS)]
    bound = dag.lower_bound(speeds)
    members = ", ".join(
        f"{m.name} (speed {m.spec.speed:g}, {m.spec.jobs} slots)" for m in fleet.members
    )
    print(f"fleet: {members}, and local (speed 1, {LOCAL_SLOTS} slots)", file=sys.stderr)
    print(
        f"graph: {len(dag.nodes)} derivations, {dag.total_work():.0f} s of work at speed 1, "
        f"critical path {dag.critical_path():.1f} s; lower bound on this pool {bound:.1f} s",
        file=sys.stderr,
    )
    env = fleet.env()
    # Fresh outputs no cache has: asking the machine's default cache would only cost time.
    pool = load_pool(
        builders=f"@{fleet.machines_file}", config=None, env=env, options={"substituters": ""}
    ).select(max_jobs=LOCAL_SLOTS)
    with tempfile.TemporaryDirectory(prefix="offload-demo-") as tmp:
        nix_file = write_nix_file(dag, Path(tmp) / "sample.nix", salt=secrets.token_hex(6))
        roots = instantiate(Installables(files=(str(nix_file),)))
    renderer = make_renderer("auto", print_logs=False)
    finished: list[JobFinished] = []

    def emit(event: Event) -> None:
        if isinstance(event, JobFinished):
            finished.append(event)
        renderer.handle(event)

    started = time.monotonic()
    # As offload build's: a second Ctrl-C waits for the first one's clean-up (cli.interrupts).
    with steady_runner() as runner:
        try:
            report, _ = execute(
                roots,
                pool,
                ensure_state_dir(),
                emit=emit,
                close=renderer.close,
                env=env,
                run=runner.run,
            )
        except Unschedulable as exc:
            # The scheduler's hint is offload build's (--keep-going), which demo has not.
            hint = (
                "the demo's members build this host's system with no features: leave system"
                " and features out of --graph's nodes (`offload simulate` takes other machines)"
            )
            raise SchedulerError(exc.message, hint=hint) from None
    elapsed = time.monotonic() - started
    _print_builds(finished, started_wall=min((f.started for f in finished), default=0.0))
    render_summary(finished, sys.stderr)
    print("\n" + result_line(len(report.built), elapsed, bound), file=sys.stderr)
    if report.failed:
        raise build_failed(report)
    return 0


def result_line(built: int, elapsed: float, bound: float) -> str:
    """The run against its lower bound; a graph of no work has none to divide by."""
    ratio = f"{elapsed / bound:.2f}" if bound > 0 else "n/a"
    return (
        f"{built} derivations built in {elapsed:.1f} s (lower bound {bound:.1f} s, ratio {ratio})"
    )


def _print_builds(finished: list[JobFinished], *, started_wall: float) -> None:
    print(f"\n{'derivation':<18} {'machine':<8} {'start':>7} {'took':>7}", file=sys.stderr)
    for event in sorted(finished, key=lambda e: e.started):
        if event.status != "built":
            continue
        print(
            f"{event.name:<18} {event.machine:<8} {event.started - started_wall:>6.1f}s "
            f"{event.duration:>6.1f}s",
            file=sys.stderr,
        )
