"""Where a first run's fixed costs go, against a second run's, phase by phase.

``python -m bench.first_fixed --shapes layered,huge --reps 2`` brings up the bench fleet
(``bench.context.FLEET_SPECS``) under /tmp and, per shape and rep, draws a fresh graph of
``NODES`` nodes at scale 1 (``bench.graphs``) and builds it three times with ``offload build
--json``, fresh outputs each time, in one state directory:

- ``first``: the state directory empty (no history, no ssh masters: a user's first run);
- ``second``: with the first's history and the ssh masters it kept;
- ``second-new``: with that history, the masters closed first (new connections only).

It prints each run's wall time, span (first decision to last build) and ``bench.fixed_costs``
phases, then the medians per run; ``--json FILE`` keeps the records. Run it alone: it times
processes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.context import FLEET_SPECS, log, make_env
from bench.fixed_costs import PHASES, close_kept, phases
from bench.graphs import generate
from bench.measure import json_events, parse_offload_events, run_timed
from bench.tools import offload_argv
from offload.dagfile import Dag, to_nix_expression
from offload.fleet import MemberSpec, fleet_down, fleet_up

__all__ = ["RUNS", "main"]

NODES = 100
RUNS = ("first", "second", "second-new")


def _run(work: Path, machines: Path, env: Mapping[str, str], dag: Dag, run: str) -> dict[str, Any]:
    nix_file = work / "graph.nix"
    nix_file.write_text(to_nix_expression(dag, salt=f"{run}-{secrets.token_hex(4)}"))
    argv = [*offload_argv(), "build", str(nix_file), "--builders", f"@{machines}"]
    argv += ["-j", "2", "--no-out-link", "--json"]
    spawned = time.time()
    done = run_timed(argv, env=env, timeout=300)
    span = parse_offload_events(done.stdout).run_s
    return {
        "run": run,
        "ok": done.returncode == 0,
        "wall_s": round(done.elapsed, 4),
        "span_s": None if span is None else round(span, 4),
        "phases": phases(spawned, spawned + done.elapsed, json_events(done.stdout)),
    }


def _summary(records: Sequence[Mapping[str, Any]]) -> None:
    for run in RUNS:
        ok = [r for r in records if r["run"] == run and r["ok"] and r["span_s"] is not None]
        if not ok:
            continue
        line = (
            f"{run}: wall less span {statistics.median(r['wall_s'] - r['span_s'] for r in ok):.3f}"
        )
        for phase, _ in PHASES:
            line += f" | {phase} {statistics.median(r['phases'].get(phase, 0.0) for r in ok):.3f}"
        print(line)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="layered,huge")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write every record here")
    args = parser.parse_args(argv)
    records: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="ofirst", dir="/tmp"))
    try:
        fleet = fleet_up(work / "f", [MemberSpec.parse(s) for s in FLEET_SPECS])
        base = make_env(fleet, work)
        for _ in range(args.reps):
            for shape in args.shapes.split(","):
                seed = secrets.randbelow(10**6)
                dag = generate(shape, NODES, seed, prefix=f"first-{shape}-s{seed}")
                env = {**base, "OFFLOAD_STATE_DIR": str(work / f"state-{shape}-{seed}")}
                for run in RUNS:
                    if run == "second-new":
                        close_kept(env)
                    record = {
                        "shape": shape,
                        "seed": seed,
                        **_run(work, fleet.machines_file, env, dag, run),
                    }
                    records.append(record)
                    shown = " ".join(f"{k} {v:.3f}" for k, v in record["phases"].items())
                    log(f"{shape} {seed} {run}: wall {record['wall_s']:.2f} {shown}")
    finally:
        fleet_down(work / "f", purge=True)
        shutil.rmtree(work, ignore_errors=True)
    if args.json is not None:
        args.json.write_text(json.dumps(records, indent=1) + "\n")
    _summary(records)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
