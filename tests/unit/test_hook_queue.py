"""``queued.json``: what offload-hook's coordinators keep waiting, for ``offload status``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from offload.hook_queue import Queued, load_queued, record_queued
from offload.procfs import owner_line


def test_a_coordinators_queue_is_read_back_and_taken_out_when_empty(tmp_path: Path) -> None:
    path = tmp_path / "queued.json"
    record_queued(path, [Queued("b", 2.0), Queued("a", 1.0)])
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_queued([path]) == [Queued("a", 1.0), Queued("b", 2.0)]  # longest waiting first
    record_queued(path, [])
    assert load_queued([path]) == []
    assert json.loads(path.read_text()) == {}


def test_the_queue_of_a_coordinator_that_is_gone_is_none(tmp_path: Path) -> None:
    # Killed outright (SIGKILL), it could not take its entry out; a live one's stays.
    path = tmp_path / "queued.json"
    namespace = str(owner_line(os.getpid())).split()[0]
    gone = f"{namespace} {2**22 + 7} 1"  # past pid_max: no such process
    path.write_text(json.dumps({gone: [{"drv": "old", "since": 1.0}], "x": "damaged"}))
    assert load_queued([path]) == []
    record_queued(path, [Queued("new", 3.0)])
    assert load_queued([path]) == [Queued("new", 3.0)]
    assert gone not in json.loads(path.read_text())  # dropped when this one wrote
