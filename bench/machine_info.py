"""The machine a benchmark ran on, recorded with its results: CPU, memory, OS, Nix, the commit."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.context import REPO
from offload.errors import OffloadError
from offload.process import run


def _first_line(argv: Sequence[str]) -> str:
    # No optional locks: `git status` must not rewrite the index of a tree others work in.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        done = run(argv, check=False, timeout=30, env=env)
    except OffloadError as exc:
        return f"unavailable ({exc.message})"
    return (done.stdout.strip().splitlines() or ["?"])[0]


def machine_info() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = round(int(line.split()[1]) / (1 << 20), 1)
    except OSError:
        pass
    os_name = "?"
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    git = ["git", "-C", str(REPO)]
    dirty = _first_line([*git, "status", "--porcelain", "--untracked-files=no"])
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory,
        "kernel": platform.release(),
        "os": os_name,
        "nix_version": _first_line(["nix-build", "--version"]).rsplit(" ", 1)[-1],
        "python_version": platform.python_version(),
        "git_commit": _first_line([*git, "rev-parse", "HEAD"]),
        "git_dirty": dirty not in {"", "?"},
        "loadavg_start": " ".join(f"{v:.2f}" for v in os.getloadavg()),
    }
