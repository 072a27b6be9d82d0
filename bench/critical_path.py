"""Where a real run's time goes along its critical path, link by link.

``python bench/critical_path.py SHAPE SEED`` brings up the bench fleet (``bench.context``),
builds the graph ``bench/graphs.py`` makes of that shape and seed (100 nodes, scale 1, as the
fresh-seeds section does) twice with ``offload build --json``, the second time with the first's
history, and walks the second run's critical path (``--run first``: the first's, on guesses)
back from the build that ended last, each build's latest-ending dependency first (``--events
FILE`` keeps that run's events). Per link, from offload's own marks (``job_phase`` and
``job_finished`` events):

- ``gap``: from the dependency's build done (its "fetching" mark: the output exists where it was
  built) to this build's first mark: the policy's wait (a slot, a faster machine);
- ``set-up``: to its "building" mark: a session, its inputs copied there;
- ``over``: its building phase less its work at that machine's speed: Nix's own cost of a build
  and the protocol's round trip (what the fresh section's floor adds per build);
- ``fetching``: its output brought to this host (off the path: the next link does not wait).

It prints the links and the sums; nothing is written to the results.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in {None, ""}:  # `python bench/critical_path.py`: the repository's root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.context import FLEET_SPECS, make_env
from bench.graphs import generate
from bench.measure import json_events, run_timed
from bench.tools import offload_argv
from offload.dagfile import Dag, to_nix_expression
from offload.fleet import MemberSpec, fleet_down, fleet_up

__all__ = ["Link", "critical_links", "main"]

NODES = 100
PARTS = ("gap", "setup", "over", "fetching")


@dataclass(frozen=True)
class Link:
    node: str
    machine: str
    gap: float
    setup: float
    over: float
    fetching: float


def _node_of(drv_path: str, names: Sequence[str]) -> str | None:
    """The graph node a built .drv is (its name, after the store hash, starts with the node's)."""
    built = drv_path.rsplit("/", 1)[-1].split("-", 1)[-1].removesuffix(".drv")
    return max((n for n in names if built.startswith(n)), key=len, default=None)


def critical_links(
    events: Sequence[Mapping[str, Any]], dag: Dag, speeds: Mapping[str, float]
) -> list[Link]:
    """The run's critical path, first link first, from its ``--json`` events."""
    names = [n.name for n in dag.nodes]
    marks: dict[str, dict[str, float]] = {}
    ended: dict[str, tuple[float, str]] = {}
    for e in events:
        node = _node_of(str(e.get("drv_path", "")), names)
        if node is None:
            continue
        if e.get("event") == "job_phase" and not e.get("step"):
            marks.setdefault(node, {}).setdefault(str(e["phase"]), float(e["time"]))
        elif e.get("event") == "job_finished" and e.get("status") == "built":
            ended[node] = (float(e["finished"]), str(e["machine"]))
    nodes = {n.name: n for n in dag.nodes}
    path: list[str] = []
    at: str | None = max(ended, key=lambda n: ended[n][0], default=None)
    while at is not None:
        path.append(at)
        deps = [d for d in nodes[at].deps if d in ended and d in marks]
        at = max(deps, key=lambda d: ended[d][0], default=None)
    links, done = [], None
    for node in reversed(path):
        seen, (end, machine) = marks.get(node, {}), ended[node]
        start = min(seen.values(), default=end)
        building = seen.get("building", start)
        built = seen.get("fetching", end)
        work = nodes[node].work / speeds.get(machine, 1.0)
        links.append(
            Link(
                node,
                machine,
                start - (start if done is None else done),
                building - start,
                built - building - work,
                end - built,
            )
        )
        done = built
    return links


def _build_twice(dag: Dag, work: Path) -> tuple[dict[str, list[dict[str, Any]]], dict[str, float]]:
    fleet = fleet_up(work / "f", [MemberSpec.parse(s) for s in FLEET_SPECS])
    try:
        env = {**make_env(fleet, work), "OFFLOAD_STATE_DIR": str(work / "state")}
        events: dict[str, list[dict[str, Any]]] = {}
        for run in ("first", "second"):
            file = work / f"{run}.nix"
            file.write_text(to_nix_expression(dag, salt=f"cp-{run}-{secrets.token_hex(4)}"))
            argv = [*offload_argv(), "build", str(file), "--builders", f"@{fleet.machines_file}"]
            done = run_timed([*argv, "-j", "2", "--no-out-link", "--json"], env=env, timeout=600)
            print(f"{run} run: exit {done.returncode}, {done.elapsed:.2f} s", flush=True)
            if done.returncode != 0:
                sys.exit(f"the {run} run failed: {done.tail()}")
            events[run] = json_events(done.stdout)
        speeds = {m.name: m.spec.speed for m in fleet.members}
        return events, {**speeds, "local": 1.0}
    finally:
        fleet_down(work / "f", purge=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("shape")
    parser.add_argument("seed", type=int)
    parser.add_argument("--run", choices=("first", "second"), default="second")
    parser.add_argument("--events", type=Path, help="write the run's --json events here")
    args = parser.parse_args(argv)
    dag = generate(args.shape, NODES, args.seed, prefix=f"cp-{args.shape}{NODES}-s{args.seed}")
    with tempfile.TemporaryDirectory(prefix="cp", dir="/tmp") as work:
        events, speeds = _build_twice(dag, Path(work))
    if args.events is not None:
        args.events.write_text("\n".join(json.dumps(e) for e in events[args.run]) + "\n")
    links = critical_links(events[args.run], dag, speeds)
    print("node machine " + " ".join(PARTS))
    for link in links:
        print(link.node, link.machine, *(f"{getattr(link, p):.4f}" for p in PARTS))
    for part in PARTS:
        values = [getattr(link, part) for link in links]
        print(f"{part}: sum {sum(values):.3f} s, median {statistics.median(values):.4f} s")
    print(f"{len(links)} links")
    return 0


if __name__ == "__main__":
    sys.exit(main())
