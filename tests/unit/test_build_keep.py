"""``offload build``'s last step, forgetting old history (``cli.build_keep.forget_old``), under
the one signal rule (``cli.interrupts``): real signals, in a fresh interpreter, sent as the
pass begins (the history module's ``prune`` wrapped to send it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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
