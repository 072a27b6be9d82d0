"""A first run, Nix's hook, then a first run that has Nix's logs of it, on the bench fleet.

``python bench/after_nix.py SHAPE SEED [--scale X]`` brings up the bench fleet
(``bench.context``), builds the graph ``bench/graphs.py`` makes of that shape and seed (100
nodes) with ``offload build`` and an empty history (``first``), with stock ``nix-build`` and
Nix's hook (``nix``, its logs in a directory of their own), then with ``offload build`` and an
empty history again, reading those logs (``after-nix``, ``offload.history.nix_logs``). It
prints each run's wall time and how the logs read at the fastest speed (4) compare with each
build's work: what the fresh section's ``after-Nix`` column measures at scale 1, at any scale.
Nothing is written to the results.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

if __package__ in {None, ""}:  # `python bench/after_nix.py`: the repository's root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.context import FLEET_SPECS, make_env
from bench.graphs import generate
from bench.measure import run_timed
from bench.tools import NO_SUBSTITUTES, offload_argv
from offload.dagfile import Dag, to_nix_expression
from offload.fleet import Fleet, MemberSpec, fleet_down, fleet_up
from offload.history.nix_logs import NixLogs

__all__ = ["main"]

NODES = 100
FASTEST = 4.0


def _build(fleet: Fleet, work: Path, dag: Dag, run: str) -> float:
    file = work / f"{run}.nix"
    file.write_text(to_nix_expression(dag, salt=f"an-{run}-{secrets.token_hex(4)}"))
    common = ["--builders", f"@{fleet.machines_file}", "-j", "2", "--no-out-link"]
    if run == "nix":
        argv = ["nix-build", str(file), *common, *NO_SUBSTITUTES]
    else:
        argv = [*offload_argv(), "build", str(file), *common]
    env = {**make_env(fleet, work), "OFFLOAD_STATE_DIR": str(work / f"state-{run}")}
    if run != "first":
        env["NIX_LOG_DIR"] = str(work / "hook-logs")  # Nix's run's alone
    done = run_timed(argv, env=env, timeout=3600)
    if done.returncode != 0:
        sys.exit(f"the {run} run failed: {done.tail()}")
    return done.elapsed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("shape")
    parser.add_argument("seed", type=int)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    dag = generate(
        args.shape, NODES, args.seed, scale=args.scale, prefix=f"an-{args.shape}-s{args.seed}"
    )
    with tempfile.TemporaryDirectory(prefix="an", dir="/tmp") as name:
        work = Path(name)
        fleet = fleet_up(work / "f", [MemberSpec.parse(s) for s in FLEET_SPECS])
        try:
            for run in ("first", "nix"):
                print(f"{run}: {_build(fleet, work, dag, run):.2f} s", flush=True)
            logs = NixLogs(work / "hook-logs" / "drvs").durations(n.name for n in dag.nodes)
            read = sorted(logs[n.name] * FASTEST / n.work for n in dag.nodes if n.name in logs)
            tenth = len(read) // 10
            print(
                f"logs of {len(read)} builds, read at {FASTEST:g}x over their work: median "
                f"{statistics.median(read):.2f}, p10 {read[tenth]:.2f}, p90 {read[-1 - tenth]:.2f}"
            )
            print(f"after-nix: {_build(fleet, work, dag, 'after-nix'):.2f} s", flush=True)
        finally:
            fleet_down(work / "f", purge=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
