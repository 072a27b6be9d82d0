"""``offload build``'s last step, forgetting old history (``cli.build_keep.forget_old``), under
the one signal rule (``cli.interrupts``): real signals, in a fresh interpreter, sent as the
pass begins (the history module's ``prune`` wrapped to send it); and the words for a backoff
file it could not write."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest

from offload.cli.build_keep import unkept_backoff

_SCRIPT = """
import os, signal, sys
from pathlib import Path
from offload.cli import interrupts
from offload.cli.build_keep import forget_old
from offload.history import db

real = db.prune
def sending(*args, **kwargs):
    os.kill(os.getpid(), getattr(signal, sys.argv[2]))
    return real(*args, **kwargs)
db.prune = sending
interrupts.install()
try:
    forget_old(Path(sys.argv[1]))
    print("went on")
except KeyboardInterrupt:
    print("stopped", interrupts.stopped_status())
"""


@pytest.mark.parametrize(("sent", "status"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_while_old_history_is_forgotten_stops_the_command(
    tmp_path: Path, sent: str, status: int
) -> None:
    # The pass caught the KeyboardInterrupt and the build exited 0, Ctrl-C and all.
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(tmp_path), sent],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"stopped {status}\n", done.stderr
    assert (tmp_path / "history.sqlite").exists()  # a new file: a pass is due at once


def test_a_backoff_a_full_disk_kept_out_is_said_full_not_unwritable() -> None:
    place = Path("/state/backoff.json")
    full = unkept_backoff(place, OSError(errno.ENOSPC, "No space left on device"))
    assert full == (
        "/state/backoff.json: the builders' backoff is not kept: No space left on device",
        "free space on the file system that holds /state (df shows it)",
    )
    directory = unkept_backoff(place, IsADirectoryError(errno.EISDIR, "Is a directory"))
    assert directory[1] == "make it a file offload can write"
