"""What every part of the benchmark shares: the options of one run, the fleet it builds on, the
callback that records a section's results, and the log line format.

A section runner gets a ``Bench`` (the running fleet, a scratch directory, the environment every
command runs in), the run's ``Options`` and a ``Save`` to record its partial results after each
measurement, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.bytecode import compiled_env
from offload.fleet import Fleet

REPO = Path(__file__).resolve().parent.parent
FLEET_SPECS = ("fast:4:2", "medium:2:2", "slow:1:2")
LOCAL_SPEED, LOCAL_SLOTS = 1.0, 2

# Records a section's (partial) results and writes the results file.
Save = Callable[[str, object], None]


@dataclass(frozen=True)
class Options:
    sections: tuple[str, ...]
    reps: int
    scale: float
    quick: bool
    out: Path
    doc: Path | None
    trivial: int
    copy_mb: int


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Bench:
    """What every build needs: the fleet, the environment, and where temporary files go."""

    fleet: Fleet
    work: Path
    env: Mapping[str, str]

    @property
    def stores(self) -> dict[str, Path]:
        return {m.name: m.root / "nix" / "store" for m in self.fleet.members}

    def speeds_and_slots(self) -> list[tuple[float, int]]:
        return [(m.spec.speed, m.spec.jobs) for m in self.fleet.members] + [
            (LOCAL_SPEED, LOCAL_SLOTS)
        ]


def make_env(fleet: Fleet, work: Path) -> dict[str, str]:
    env = fleet.env()
    # No network here: never let either tool wait on a binary cache.
    env["NIX_CONFIG"] = "substituters =\nbuilders-use-substitutes = false\n"
    env["OFFLOAD_STATE_DIR"] = str(work / "offload-state")
    # The bench's build logs are its own: offload's first runs read only what this bench's
    # Nix built (``offload.history.nix_logs``), and nothing is left in the machine's log dir.
    env["NIX_LOG_DIR"] = str(work / "nix-log")
    return compiled_env(env)  # offload as installed: no module compiled at each start
