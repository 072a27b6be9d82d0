"""A probe of the slots (``offload status``, the hook's every decision) never makes a build
taking a free slot find it busy, and a FIFO among the slot files does not hang it (real
flocks, real /proc/locks, two processes)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from offload.slots import SlotLocks, SlotProbe

_PROBING = """
import sys
import threading
from pathlib import Path
from offload.slots import SlotLocks, SlotProbe
locks = SlotLocks(Path(sys.argv[1]), make=False)
print("probing", flush=True)
while True:
    locks.probe("m", 1)
"""


def test_a_slot_free_while_probed_is_never_refused(tmp_path: Path) -> None:
    locks = SlotLocks(tmp_path)
    os.close(locks.try_acquire("m", 1) or -1)  # its file made, and let go
    prober = subprocess.Popen(
        [sys.executable, "-c", _PROBING, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert prober.stdout is not None
        assert prober.stdout.readline() == "probing\n"
        refused = 0
        for _ in range(20_000):
            fd = locks.try_acquire("m", 1)
            if fd is None:
                refused += 1
            else:
                os.close(fd)
        # The probe's shared flock, held a moment, refused about 5% of these.
        assert refused == 0
    finally:
        prober.kill()
        prober.wait()
        if prober.stdout is not None:
            prober.stdout.close()


def test_a_fifo_in_a_slot_s_place_is_a_slot_not_free(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "m-0")  # opened to read, it waited for a writer for ever
    probed: list[SlotProbe] = []
    look = threading.Thread(
        target=lambda: probed.append(SlotLocks(tmp_path, make=False).probe("m", 2)), daemon=True
    )
    look.start()
    look.join(30)  # a bound on a hang, not a wait for anything
    assert probed, "the probe hung on the FIFO"
    assert (probed[0].free, probed[0].busy_ends, probed[0].by_nix) == (1, (None,), 0)
