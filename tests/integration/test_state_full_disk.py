"""offload's readers on a state directory whose file system is full (a small tmpfs filled up,
in a private mount namespace the test makes): the history is read as it is, and what cannot be
done is said as the full disk it is, not as the files' permissions."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from offload.history.db import History
from offload.history.records import BuildRecord, RunRecord


def _on_a_full_disk(history: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """``argv`` run with the state directory a full 400 KiB tmpfs holding ``history``."""
    state = shlex.quote(str(history.parent / "state"))
    fill = f"dd if=/dev/zero of={state}/fill bs=4k count=1000 2>/dev/null"
    script = (
        f"mkdir -p {state} && mount -t tmpfs -o size=400k none {state}"
        f" && cp {shlex.quote(str(history))} {state}/ && ({fill}; true)"
        f" && exec {shlex.join(argv)}"
    )
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        env={**os.environ, "OFFLOAD_STATE_DIR": str(history.parent / "state")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_history_of_a_full_disk_is_read_as_it_is_and_said_full(tmp_path: Path) -> None:
    # Was "disk I/O error", with a hint to check the files' owners and modes: SQLite could
    # not size the -shm file it makes to read.
    drv = "/nix/store/" + "a" * 32 + "-hello-2.12.drv"
    build = BuildRecord("run-full", drv, "hello", "local", 10.0, 14.0, "built", name="hello-2.12")
    with History(tmp_path / "history.sqlite") as history:
        history.record_run(
            RunRecord("run-full", 9.0, 15.0, ("hello",), "ok", (), None, None), [build]
        )
    offload = [sys.executable, "-m", "offload"]
    listed = _on_a_full_disk(tmp_path / "history.sqlite", *offload, "history", "--json")
    assert listed.returncode == 0, listed.stderr
    assert '"run_id": "run-full"' in listed.stdout
    assert listed.stderr == (
        f"note: {tmp_path}/state is full: the history is read as it is on disk (the last runs"
        " kept may be missing)\n"
    )
    # Where it must be written (a run's record), the fault is said as the full disk it is.
    opened = _on_a_full_disk(tmp_path / "history.sqlite", sys.executable, "-c", _OPEN)
    assert opened.stdout.splitlines() == [
        f"{tmp_path}/state/history.sqlite: cannot use the history database: disk I/O error",
        f"free space on the file system that holds {tmp_path}/state (df shows it)",
    ], opened.stderr


_OPEN = """
import os
from pathlib import Path
from offload.errors import StoreError
from offload.history.db import History
try:
    History(Path(os.environ["OFFLOAD_STATE_DIR"]) / "history.sqlite")
except StoreError as exc:
    print(exc.message)
    print(exc.hint)
"""
