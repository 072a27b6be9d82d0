"""``stop_coordinators`` finds the pid files coordinators write (tests and the bench use it)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from offload.hook.coordinator import Coordinator, stop_coordinators
from offload.procfs import running


def test_a_coordinators_pid_file_is_found_and_its_process_stopped(tmp_path: Path) -> None:
    # A stand-in process that is not our child (its shell exits), as a coordinator is not.
    started = subprocess.run(
        ["/bin/sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(started.stdout)
    pid_file = Coordinator(tmp_path, Path("/run/offload-hook-0/0123abcd.sock"), 1.0).pid_file
    pid_file.write_text(f"{pid}\n")
    assert stop_coordinators(tmp_path, timeout=10) == [pid]
    # Exited; init reaps it in its own time (``procfs.running``).
    assert not running(pid)
