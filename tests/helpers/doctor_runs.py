"""``offload doctor`` run as a subprocess against a fleet, and what its ``--json`` report says;
machines files with one member's line changed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from offload.fleet import Fleet
from tests.helpers.fleets import machines_lines


def doctor(
    fleet: Fleet,
    tmp_path: Path,
    machines: Path,
    *args: str,
    timeout: float = 60,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    env = {**fleet.env(), **(env or {})}
    env["OFFLOAD_STATE_DIR"] = str(tmp_path / "state")
    argv = [sys.executable, "-m", "offload", "doctor", "--builders", f"@{machines}", *args]
    return subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=timeout, check=False, cwd=tmp_path
    )


def reports(done: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    return {machine["name"]: machine for machine in json.loads(done.stdout)}


def verdicts(report: dict[str, Any]) -> dict[str, str]:
    return {check["name"]: check["verdict"] for check in report["checks"]}


def check(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in report["checks"] if c["name"] == name)


def lines_with(fleet: Fleet, name: str, column: int, value: str) -> list[str]:
    """The fleet's machines lines with member ``name``'s ``column`` (0-based) set to ``value``."""
    out = []
    for fields in machines_lines(fleet):
        if fields[0] == fleet.member(name).uri:
            fields[column] = value
        out.append(" ".join(fields))
    return out


def write(tmp_path: Path, lines: list[str], name: str = "machines") -> Path:
    path = tmp_path / name
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def without_identity(fleet: Fleet, tmp_path: Path) -> dict[str, str]:
    """NIX_SSHOPTS for the fleet's ssh config less its IdentityFile: the machines line's key
    (column 3) is the only one ssh offers, as for the nix-daemon."""
    config = tmp_path / "ssh_config"
    config.write_text(
        "".join(
            line
            for line in fleet.ssh_config.read_text().splitlines(keepends=True)
            if not line.strip().startswith("IdentityFile")
        )
    )
    return {"NIX_SSHOPTS": f"-F {config}"}
