"""`nix-build` with offload-hook as its build hook, on a fleet: its command line and environment."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from offload.fleet import Fleet
from tests.helpers.fleets import member_processes
from tests.helpers.nix_files import SPEED
from tests.helpers.processes import start

HOOK = str(Path(sys.executable).parent / "offload-hook")


def hook_env(fleet: Fleet, tmp_path: Path, sshopts: str | None = None) -> dict[str, str]:
    env = fleet.env()
    env["OFFLOAD_STATE_DIR"] = str(tmp_path / "state")
    if sshopts is not None:
        env["NIX_SSHOPTS"] = sshopts
    return env


def nix_build_argv(file: Path, builders: str, *args: str) -> list[str]:
    return [
        "nix-build",
        str(file),
        "--no-out-link",
        "--option",
        "build-hook",
        HOOK,
        "--option",
        "substituters",
        "",
        "--builders",
        builders,
        *args,
    ]


def nix_build(
    fleet: Fleet, tmp_path: Path, file: Path, *args: str, builders: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        nix_build_argv(file, builders or f"@{fleet.machines_file}", *args),
        env={**hook_env(fleet, tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def start_nix_build(
    fleet: Fleet, tmp_path: Path, file: Path, *args: str, output: bool = True, **env: str
) -> subprocess.Popen[str]:
    """``nix_build`` in the background (its own process group: ``processes.stop`` ends it),
    stderr piped as text, stdout too unless ``output`` is False."""
    return start(
        nix_build_argv(file, f"@{fleet.machines_file}", *args),
        env={**hook_env(fleet, tmp_path), **env},
        stdout=subprocess.PIPE if output else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def outputs(done: subprocess.CompletedProcess[str]) -> list[str]:
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def leaves(count: int, script: str = "") -> str:
    """``count`` independent derivations that record where they ran, as a list."""
    items = " ".join(f'(mk "leaf{i}" "{script}{SPEED} > $out" {{}})' for i in range(count))
    return f"[ {items} ]\n"


def remote_leftovers(fleet: Fleet, members: Sequence[str]) -> list[str]:
    """The builds (a ``sleep 60``) and serve sessions still running on ``members``."""
    return [
        cmd
        for name in members
        for _, cmd in member_processes(fleet.member(name))
        if "sleep 60" in cmd or "nix-store --serve" in cmd
    ]


def coordinator_pids(state: Path) -> list[int]:
    return [int(p.read_text()) for p in state.glob("hook-*.pid")]
