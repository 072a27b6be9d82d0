"""Paired A/B of ``nix-build`` with ``offload-hook``: two source trees, alternated on one fleet.

``python -m bench.ab_hook --a OLD/src --b NEW/src --pairs 8 --graph layered:60:1`` brings up the
bench fleet (``bench.context.FLEET_SPECS``) under /tmp and builds the bench graph (scale 4, as
``make bench``; ``--graph`` repeatable) with ``nix-build -j 2 --option build-hook offload-hook``
and each tree in turn, A then B, then B then A, and so on: fresh outputs each time, a state
directory per tree (each keeps its own history, as a user's would), and each tree's coordinator
stopped after every run, so the next run of the other tree starts one of its own. It prints each
run's wall time, the medians per tree and the median of the paired ratios B/A (``--json FILE``
keeps the wall times). Run it under the bench lock (``flock /tmp/offload-bench.lock ...``).
"""

from __future__ import annotations

import math
import os
import secrets
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from bench.ab_fixed import keep_records, pair_order, paired_fleet, tree_parser
from bench.context import LOCAL_SLOTS, log
from bench.graphs import generate
from bench.measure import run_timed
from bench.tools import tool_argv
from offload.dagfile import to_nix_expression
from offload.hook.coordinator import stop_coordinators

__all__ = ["main"]

_SCALE = 4.0


def _one(work: Path, machines: Path, env: Mapping[str, str], graph: str, label: str) -> float:
    """Wall seconds of one hooked nix-build of ``graph`` (shape:nodes:seed); inf if it failed."""
    shape, nodes, seed = graph.split(":")
    dag = generate(shape, int(nodes), int(seed), scale=_SCALE, prefix=f"ab{shape}{nodes}s{seed}")
    nix_file = work / f"ab-{label}.nix"
    nix_file.write_text(to_nix_expression(dag, salt=f"{label}-{secrets.token_hex(4)}"))
    argv = tool_argv("hook", nix_file, f"@{machines}", LOCAL_SLOTS)
    try:
        done = run_timed(argv, env=env, timeout=600)
    finally:
        stop_coordinators(Path(env["OFFLOAD_STATE_DIR"]))
    if done.returncode != 0:
        log(f"{label}: failed: {done.tail()}")
        return float("inf")
    return done.elapsed


def main(argv: Sequence[str] | None = None) -> int:
    parser = tree_parser(__doc__, pairs=6)
    parser.add_argument("--graph", action="append", help="shape:nodes:seed (default layered:60:1)")
    args = parser.parse_args(argv)
    graphs = args.graph or ["layered:60:1"]
    walls: dict[tuple[str, str], list[float]] = {}
    with paired_fleet(args.a, args.b, prefix="oabh") as (work, fleet, envs):
        try:
            for pair in range(args.pairs):
                for graph in graphs:
                    for tree in pair_order(pair):
                        label = f"{tree}{pair}-{graph.replace(':', '-')}"
                        wall = _one(work, fleet.machines_file, envs[tree], graph, label)
                        walls.setdefault((graph, tree), []).append(wall)
                        log(f"pair {pair + 1} {graph} {tree}: {wall:.2f} s")
        finally:
            for tree in ("a", "b"):
                stop_coordinators(work / f"state-{tree}")
    keep_records(args.json, {f"{graph} {tree}": w for (graph, tree), w in walls.items()})
    for graph in graphs:
        pairs = list(zip(walls.get((graph, "A"), []), walls.get((graph, "B"), []), strict=False))
        ok = [(x, y) for x, y in pairs if math.isfinite(x) and math.isfinite(y)]
        if len(ok) < len(pairs):
            print(f"{graph}: {len(pairs) - len(ok)} of {len(pairs)} pairs left out (a run failed)")
        if not ok:
            continue
        a, b = [x for x, _ in ok], [y for _, y in ok]
        ratios = [y / x for x, y in ok]
        shown = ", ".join(f"{r:.3f}" for r in ratios)
        print(
            f"{graph}: A median {statistics.median(a):.2f} s, "
            f"B median {statistics.median(b):.2f} s; B/A {len(ratios)} pairs: "
            f"median {statistics.median(ratios):.3f}"
            f", B faster in {sum(r < 1 for r in ratios)} ({shown})"
        )
    return 0


if __name__ == "__main__":
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    sys.exit(main())
