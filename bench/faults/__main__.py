"""Run the fault suite: ``python -m bench.faults [--iterations N] [--only FAULT] [--out FILE]``.

The suite brings up its own fleet under /tmp and always stops it; each fault runs
``--iterations`` times (in turn with the others, so a slow spell of the machine is spread over
all of them), and the figures go to docs/RELIABILITY.md (``--out``). Exit 1 when a target was
missed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import random
import shutil
import sys
import tempfile
from pathlib import Path

if __package__ in {None, ""}:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.faults.report import render, verdicts
from bench.faults.scenarios import FAULTS, SPECS, Suite, Trial, clean_work
from offload.fleet import fleet_down, fleet_up

ROOT = Path(__file__).resolve().parents[2]


def run_suite(iterations: int, only: list[str], seed: int) -> dict[str, list[Trial]]:
    root = Path(tempfile.mkdtemp(prefix="ofz", dir="/tmp"))
    work = Path(tempfile.mkdtemp(prefix="ofzw", dir="/tmp"))
    results: dict[str, list[Trial]] = {name: [] for name in only}
    try:
        suite = Suite(fleet_up(root, SPECS), root, work, random.Random(seed))
        for i in range(iterations):
            for name in only:
                trial = FAULTS[name](suite)
                results[name].append(trial)
                clean_work(work)
                print(
                    f"[{i + 1}/{iterations}] {name}: ok={trial.ok} correct={trial.correct} "
                    f"notice={trial.notice} left={trial.left} {trial.note}",
                    flush=True,
                )
    finally:
        try:
            fleet_down(root, purge=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--only", action="append", choices=sorted(FAULTS), default=[])
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "RELIABILITY.md")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 30)
    results = run_suite(args.iterations, args.only or list(FAULTS), seed)
    command = f"make faults (python -m bench.faults --iterations {args.iterations} --seed {seed})"
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    host = f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores"
    args.out.write_text(render(results, command=command, iterations=args.iterations, when=when,
                               host=host))  # fmt: skip
    summary = verdicts(results)
    print("\n".join(summary))
    return 1 if any(line.endswith("MISSED") for line in summary) else 0


if __name__ == "__main__":
    sys.exit(main())
