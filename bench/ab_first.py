"""Paired A/B of first runs: two source trees, alternated on freshly drawn graphs.

``python -m bench.ab_first --a OLD/src --b NEW/src --pairs 3`` brings up the bench fleet
(``bench.ab_fixed.paired_fleet``) and, for each pair and each shape, draws a graph of 100 nodes
at scale 1 from a fresh seed (``bench/graphs.py``, as the fresh-seeds section does), then
builds it with each tree in turn (A then B, then B then A, and so on), each run a first run:
fresh outputs and an empty state directory, so no history. It prints each run's wall time,
the paired ratios B/A per shape and their median over every pair; ``--json FILE`` keeps the
records. Run it under the bench lock (``flock /tmp/offload-bench.lock ...``): it times
processes, and others' must not overlap.
"""

from __future__ import annotations

import os
import secrets
import shutil
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.ab_fixed import keep_records, pair_order, paired_fleet, tree_parser
from bench.context import log
from bench.graphs import SHAPES, generate
from bench.measure import run_timed
from offload.dagfile import to_nix_expression

__all__ = ["main"]

NODES = 100


def _one(
    work: Path, machines: Path, env: Mapping[str, str], nix_file: Path, label: str
) -> dict[str, Any]:
    state = work / f"state-{label}"  # empty: a first run
    shutil.rmtree(state, ignore_errors=True)
    run_env = {**env, "OFFLOAD_STATE_DIR": str(state)}
    argv = [sys.executable, "-m", "offload", "build", str(nix_file), "--builders", f"@{machines}"]
    argv += ["-j", "2", "--no-out-link", "--json"]
    done = run_timed(argv, env=run_env, timeout=300)
    shutil.rmtree(state, ignore_errors=True)
    return {"ok": done.returncode == 0, "wall_s": round(done.elapsed, 4)}


def _summary(records: Sequence[dict[str, Any]]) -> None:
    ratios: dict[str, list[float]] = {}
    for r in records:
        if r["A"]["ok"] and r["B"]["ok"]:
            ratios.setdefault(r["shape"], []).append(r["B"]["wall_s"] / r["A"]["wall_s"])
    every = [x for xs in ratios.values() for x in xs]
    for shape, xs in ratios.items():
        shown = ", ".join(f"{x:.3f}" for x in xs)
        print(f"{shape}: B/A median {statistics.median(xs):.3f} ({shown})")
    if every:
        print(f"all: B/A median {statistics.median(every):.3f} over {len(every)} pairs")


def main(argv: Sequence[str] | None = None) -> int:
    parser = tree_parser(__doc__, pairs=3)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    args = parser.parse_args(argv)
    records: list[dict[str, Any]] = []
    with paired_fleet(args.a, args.b, prefix="oabf") as (work, fleet, envs):
        for pair in range(args.pairs):
            for shape in args.shapes.split(","):
                seed = secrets.randbelow(1_000_000)
                dag = generate(shape, NODES, seed)
                record: dict[str, Any] = {"shape": shape, "seed": seed}
                for tree in pair_order(pair):
                    nix_file = work / f"{shape}-{seed}-{tree}.nix"
                    salt = f"abf-{tree}-{secrets.token_hex(4)}"
                    nix_file.write_text(to_nix_expression(dag, salt=salt))
                    record[tree] = _one(work, fleet.machines_file, envs[tree], nix_file, tree)
                    log(f"pair {pair + 1} {shape} {seed} {tree}: {record[tree]['wall_s']:.3f} s")
                records.append(record)
    keep_records(args.json, records)
    _summary(records)
    return 0


if __name__ == "__main__":
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    sys.exit(main())
