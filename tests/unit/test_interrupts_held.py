"""``threads.interrupts_held``: Ctrl-C, SIGTERM and SIGHUP wait for the end of the block (a
daemon's fork), then go to the handler each had; real signals, in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

import pytest

# The command line's SIGTERM stops the command as a KeyboardInterrupt does; the signal is sent
# to the process itself in the block, and handled at once unless it is held.
_SCRIPT = """
import os, signal, sys
from offload.threads import interrupts_held
if sys.argv[1] == "ignored":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a script's background job
def stop(signum, frame):
    raise KeyboardInterrupt
for signum in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(signum, stop)
try:
    with interrupts_held():
        os.kill(os.getpid(), getattr(signal, sys.argv[2]))
        for _ in range(1000):
            pass
        print("block ended", flush=True)
except KeyboardInterrupt:
    print("stopped after it", flush=True)
print("sigint ignored" if signal.getsignal(signal.SIGINT) is signal.SIG_IGN else "sigint handled")
"""


@pytest.mark.parametrize(
    ("ctrl_c", "sent"),
    [
        ("default", "SIGINT"),
        ("default", "SIGTERM"),
        ("default", "SIGHUP"),
        # Was raised in the block: only SIGINT was held, and not at all where it was ignored.
        ("ignored", "SIGTERM"),
        ("ignored", "SIGHUP"),
    ],
)
def test_a_signal_in_the_block_stops_the_command_only_after_it(ctrl_c: str, sent: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, ctrl_c, sent],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    ignored = "sigint ignored" if ctrl_c == "ignored" else "sigint handled"
    assert done.stdout.splitlines() == ["block ended", "stopped after it", ignored], done.stderr
