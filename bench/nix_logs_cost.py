"""What a first run pays to read estimates from Nix's build logs (``offload.history.nix_logs``).

``python -m bench.nix_logs_cost --logs 20000 --names 300``: a log directory of ``--logs`` logs
whose names share one first word (``python3.12-pkgN-1.M``, ``2 * --names`` names, as a Python
package set's logs do), then ``NixLogs.durations`` for ``--names`` of those names, what
``offload build``'s first run asks with a Python environment's graph. Prints the seconds of each
of ``--reps`` fresh ``NixLogs`` (listing, names and file times each time) and how many names
got an estimate. The directory is made under /tmp and removed.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from offload.history.nix_logs import NixLogs

__all__ = ["main"]

_NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"


def fill(drvs: Path, logs: int, names: int) -> list[str]:
    """``logs`` empty log files under ``drvs``; the names asked (every other name logged)."""
    rng = random.Random(1)
    for i in range(logs):
        hash_part = "".join(rng.choice(_NIX32) for _ in range(32))
        directory = drvs / hash_part[:2]
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{hash_part[2:]}-python3.12-pkg{i % (2 * names)}-1.{i}.drv.bz2").touch()
    return [f"python3.12-pkg{j}" for j in range(names)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", type=int, default=20_000)
    parser.add_argument("--names", type=int, default=300)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="nix-logs-cost-", dir="/tmp"))
    try:
        asked = fill(work / "drvs", args.logs, args.names)
        for _ in range(args.reps):
            began = time.perf_counter()
            found = NixLogs(work / "drvs").durations(asked)
            seconds = time.perf_counter() - began
            print(
                f"{args.logs} logs, {len(asked)} names asked: {seconds:.3f} s, {len(found)} found"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
