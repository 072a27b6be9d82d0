"""The hook's record of what it declined to each Nix process (``offload.hook.local_queue``):
local slots busy until the declines are expected done, and the files of ended Nix processes
removed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from offload.hook.local_queue import LocalQueue


def test_a_local_slot_frees_once_the_declines_before_it_are_expected_done(tmp_path: Path) -> None:
    queue = LocalQueue(tmp_path, os.getpid())
    assert queue.start("/nix/store/a.drv", 1, now=0.0) == 0.0
    queue.add("/nix/store/a.drv", 10.0)
    assert queue.start("/nix/store/b.drv", 1, now=1.0) == 10.0
    assert queue.start("/nix/store/b.drv", 2, now=1.0) == 1.0  # a second slot is free
    assert queue.start("/nix/store/a.drv", 1, now=1.0) == 1.0  # asked again: still waiting
    assert queue.start("/nix/store/b.drv", 1, now=11.0) == 11.0  # past its end


def test_the_files_of_ended_nix_processes_go_when_a_new_one_is_made(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid is free now (reaped)
    LocalQueue(tmp_path, gone.pid).add("/nix/store/a.drv", 5.0)
    LocalQueue(tmp_path, os.getpid()).add("/nix/store/b.drv", 5.0)  # alive: kept
    assert sorted(p.name for p in (tmp_path / "local-queue").iterdir()) == [f"{os.getpid()}.json"]
    assert LocalQueue(tmp_path, os.getpid()).start("/nix/store/c.drv", 1, now=1.0) == 5.0
