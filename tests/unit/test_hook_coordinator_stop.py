"""``stop_coordinators`` finds the pid files coordinators write (tests and the bench use it),
and stops the process a file names only while it is still a coordinator of that state: a
pid file outlives a coordinator that was killed, and its pid may be another process's by then
(pids wrap around: every few minutes under the test suite on a host whose pid_max is 32768)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from offload.hook.coordinator import Coordinator, stop_coordinators
from offload.procfs import running

# A stand-in for a coordinator, run as the hook runs one (``-m offload.hook.coordinator STATE
# ...``), from a package of that name that only sleeps.
SLEEPER = "import time\ntime.sleep(60)\n"


def _detached(argv: list[str], env: dict[str, str] | None = None) -> int:
    """Start ``argv`` in the background of a shell that exits: not our child, as a
    coordinator is not; its pid."""
    script = '"$@" >/dev/null 2>&1 & echo $!'
    started = subprocess.run(
        ["/bin/sh", "-c", script, "sh", *argv], capture_output=True, text=True, check=True, env=env
    )
    return int(started.stdout)


def _pid_file(state: Path) -> Path:
    return Coordinator(state, Path("/run/offload-hook-0/0123abcd.sock"), 1.0).pid_file


def test_a_coordinators_pid_file_is_found_and_its_process_stopped(tmp_path: Path) -> None:
    package = tmp_path / "stand-in" / "offload" / "hook"
    package.mkdir(parents=True)
    (package.parent / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "coordinator.py").write_text(SLEEPER)
    state = tmp_path / "state"
    state.mkdir()
    argv = [sys.executable, "-m", "offload.hook.coordinator", str(state), "sock", "3"]
    pid = _detached(argv, env={"PYTHONPATH": str(tmp_path / "stand-in")})
    _pid_file(state).write_text(f"{pid}\n")
    assert stop_coordinators(state, timeout=10) == [pid]
    # Exited; init reaps it in its own time (``procfs.running``).
    assert not running(pid)


def test_a_pid_file_naming_another_process_now_leaves_it_alone(tmp_path: Path) -> None:
    pid = _detached(["sleep", "60"])
    try:
        _pid_file(tmp_path).write_text(f"{pid}\n")
        assert stop_coordinators(tmp_path, timeout=10) == []
        assert running(pid)
    finally:
        subprocess.run(["kill", str(pid)], check=True)
