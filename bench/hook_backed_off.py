"""nix-build with offload-hook while every builder is backed off: how long the local machine
takes a small graph whose derivations the hook has nowhere else to send.

``python -m bench.hook_backed_off SRC [--reps 3]`` brings up a one-member fleet under /tmp,
backs its member off (as an earlier run that found it down leaves it, ``offload.backoff``) in a
fresh state directory per repetition, and times ``nix-build -j 1 --option build-hook
offload-hook`` of a chain of three one-second builds and two independent ones, with SRC's
offload (``PYTHONPATH``). The hook once postponed each derivation to Nix's next 5 s poll (a
tester away from home); its median wall time is printed. Run it under the bench lock
(``flock /tmp/offload-bench.lock ...``).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from offload.backoff import Health, save_backoff
from offload.fleet import MemberSpec, fleet_down, fleet_up

__all__ = ["GRAPH", "main"]

# Three one-second builds in a chain and two beside it, under one top.
GRAPH = """let mk = name: deps: derivation {{ inherit name; system = builtins.currentSystem;
  builder = "/bin/sh"; args = ["-c" "/bin/sleep 1; echo {salt} $name > $out"]; d = deps; }};
  a = mk "a" []; b = mk "b" [a]; c = mk "c" [b]; p1 = mk "p1" []; p2 = mk "p2" [];
in mk "all" [c p1 p2]
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="the src directory of the offload to time")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    hook = Path(sys.executable).parent / "offload-hook"
    work = Path(tempfile.mkdtemp(prefix="ohb", dir="/tmp"))
    walls: list[float] = []
    try:
        fleet = fleet_up(work / "f", [MemberSpec("hbx", 1.0, 2)])
        for rep in range(args.reps):
            state = work / f"state{rep}"
            env = {**fleet.env(), "OFFLOAD_STATE_DIR": str(state), "PYTHONPATH": str(args.src)}
            down = {"hbx": Health(1, time.time() + 600, "backed off by the bench")}
            save_backoff(state / "backoff.json", down, time.time())
            nix = work / f"graph{rep}.nix"
            nix.write_text(GRAPH.format(salt=secrets.token_hex(4)))
            argv_ = ["nix-build", str(nix), "--no-out-link", "-j1", "--builders"]
            argv_ += [f"@{fleet.machines_file}", "--option", "build-hook", str(hook)]
            argv_ += ["--option", "substituters", ""]
            started = time.monotonic()
            done = subprocess.run(argv_, env=env, capture_output=True, text=True, check=False)
            walls.append(time.monotonic() - started)
            if done.returncode != 0:
                raise SystemExit(f"hook_backed_off: nix-build failed: {done.stderr[-1500:]}")
            subprocess.run(["pkill", "-f", f"hook.coordinator {state}"], check=False)
    finally:
        fleet_down(work / "f", purge=True)
        shutil.rmtree(work, ignore_errors=True)
    shown = ", ".join(f"{w:.2f}" for w in walls)
    print(f"{args.src}: median {statistics.median(walls):.2f} s ({shown})")
    return 0


if __name__ == "__main__":
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    sys.exit(main())
