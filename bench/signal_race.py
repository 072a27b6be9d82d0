"""Two signals a moment apart, many times: which one's status ``offload build`` ends with.

``python bench/signal_race.py [RUNS] [HOGS]`` builds a trivial derivation locally RUNS times
(default 100) beside HOGS busy processes (default 2, one per core here: the race needs the
threads of offload to wait for a core). Each time it lets offload block writing its output
path into a full pipe, once the run is over, then sends a Ctrl-C and a SIGTERM back to back,
as ``tests/integration/test_signals_after_run.py`` does once. The exit status must be the
first signal's, 130; it prints how many runs ended with each status. Before offload's threads
blocked the signals (``offload.threads``), 4 of 100 ended 143 here: an idle worker thread took
the Ctrl-C and noted it after the main thread had handled the SIGTERM.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

if __package__ in {None, ""}:  # `python bench/signal_race.py`: the repository's root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers.full_pipe import drained, full_pipe, writing

WAIT = 60.0  # seconds for offload to reach its output path


def once(work: Path, env: dict[str, str], index: int) -> int:
    """One run stopped by a Ctrl-C and a SIGTERM while it prints; its exit status."""
    expr = (
        f'derivation {{ name = "race-{uuid.uuid4().hex[:12]}"; system = builtins.currentSystem; '
        'builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; }'
    )
    link = work / f"result-{index}"
    argv = [sys.executable, "-m", "offload", "build", "--expr", expr, "--builders", ""]
    read, write = full_pipe()
    try:
        proc = subprocess.Popen(
            [*argv, "-o", str(link)], stdout=write, stderr=subprocess.DEVNULL, env=env
        )
        os.close(write)
        deadline = time.monotonic() + WAIT
        while not writing(proc.pid):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                sys.exit(f"offload did not reach its output path (exit {proc.wait()})")
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGTERM)
        drained(read)
        return proc.wait()
    finally:
        os.close(read)
        link.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("runs", nargs="?", type=int, default=100)
    parser.add_argument("hogs", nargs="?", type=int, default=2)
    args = parser.parse_args(argv)
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hogs)]
    statuses: collections.Counter[int] = collections.Counter()
    try:
        with tempfile.TemporaryDirectory(prefix="race") as work:
            env = {**os.environ, "OFFLOAD_STATE_DIR": str(Path(work) / "state")}
            env["NIX_CONFIG"] = "substituters =\n"
            for index in range(args.runs):
                statuses[once(Path(work), env, index)] += 1
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    print(", ".join(f"exit {status}: {n}" for status, n in sorted(statuses.items())))
    return 0 if set(statuses) == {128 + signal.SIGINT} else 1


if __name__ == "__main__":
    sys.exit(main())
