"""offload's commands on a state directory that exists but is on a read-only mount (a bind
mount made read-only in a private mount namespace the test makes; as root, permission bits
would not stop the commands): what only reads it works and changes nothing there, what must
write it is one error line naming it, with a hint."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from offload.history.db import History
from offload.history.records import BuildRecord, RunRecord


def _offload_read_only(
    read_only: Path, *args: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """``offload ARGS`` with ``read_only`` mounted read-only over itself."""
    place = shlex.quote(str(read_only))
    command = shlex.join([sys.executable, "-m", "offload", *args])
    script = f"mount --bind {place} {place} && mount -o remount,bind,ro {place} && exec {command}"
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _contents(place: Path) -> list[tuple[str, bytes]]:
    return sorted((p.name, p.read_bytes()) for p in place.iterdir() if p.is_file())


def test_history_and_report_read_a_read_only_state_directory(tmp_path: Path) -> None:
    state = tmp_path / "state"
    drv = "/nix/store/" + "a" * 32 + "-hello-2.12.drv"
    build = BuildRecord("run-ro", drv, "hello", "local", 10.0, 14.0, "built", name="hello-2.12")
    with History(state / "history.sqlite") as history:
        history.record_run(
            RunRecord("run-ro", 9.0, 15.0, ("hello",), "ok", (), None, None), [build]
        )
    before = _contents(state)
    out = tmp_path / "run.html"
    env = {"OFFLOAD_STATE_DIR": str(state)}
    listed = _offload_read_only(state, "history", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert '"run_id": "run-ro"' in listed.stdout
    page = _offload_read_only(state, "report", "-o", str(out), env=env)
    assert page.returncode == 0, page.stderr
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert _contents(state) == before
