"""Two processes on one host waiting for a machine's slots take them first come, first served
(offload.slot_waiters), over real slot files and locks in a temporary directory. Each
``SlotLocks`` is one process's (its own waiters' queue and markers); a child process stands for
one killed while it waited."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload.slot_waiters import SETTLED, WantMarkers
from offload.slots import SlotLocks

KEY = "ssh:__fast"


def test_a_slot_let_go_goes_to_the_other_processs_waiter_that_came_first(tmp_path: Path) -> None:
    # Run A builds on fast's one slot with builds to spare; B asks for it once. A's next copy
    # took every slot A let go at once (B looked again only every 0.25 s), and B waited for
    # all of A's work.
    order: list[str] = []

    async def scenario() -> None:
        a, b = SlotLocks(tmp_path), SlotLocks(tmp_path)
        b_waits = asyncio.Event()

        async def take(locks: SlotLocks, name: str) -> None:
            async with locks.hold(KEY, 1, on_wait=b_waits.set if name == "b" else None):
                order.append(name)

        async with a.hold(KEY, 1):
            b_task = asyncio.create_task(take(b, "b"))
            await b_waits.wait()  # b found the slot held: it waits, and says since when
            a_task = asyncio.create_task(take(a, "a"))  # a's next copy, given the slot now
            await asyncio.sleep(0)
        async with asyncio.timeout(10):
            await asyncio.gather(b_task, a_task)

    asyncio.run(scenario())
    assert order == ["b", "a"]
    assert not [p for p in tmp_path.iterdir() if ".want." in p.name]  # no marker left


def test_a_new_request_of_a_process_waits_behind_another_processs_waiter(
    tmp_path: Path,
) -> None:
    markers = WantMarkers(tmp_path, "other")
    locks = SlotLocks(tmp_path)
    with markers.waiting(KEY, 0.0):  # another process waits for fast since long ago
        fd = locks.try_acquire(KEY, 1)  # (taking one by hand is still possible)
        assert fd is not None
        os.close(fd)

        async def asks() -> bool:
            try:
                async with asyncio.timeout(0.5), locks.hold(KEY, 1):
                    return True
            except TimeoutError:
                return False

        assert asyncio.run(asks()) is False  # the slot is free, but the other came first
    assert asyncio.run(asks()) is True


def test_the_marker_of_a_process_killed_as_it_waited_is_no_waiter(tmp_path: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", _WAIT.format(directory=str(tmp_path), key=KEY)],
        stdout=subprocess.PIPE,
        text=True,
    ) as waiting:
        try:
            assert waiting.stdout is not None
            assert waiting.stdout.readline().strip() == "waiting"
            assert WantMarkers(tmp_path, "me").waited_before(KEY, 1e12)
        finally:
            waiting.send_signal(signal.SIGKILL)
            waiting.wait()
    assert not WantMarkers(tmp_path, "me").waited_before(KEY, 1e12)
    assert not [p for p in tmp_path.iterdir() if ".want." in p.name]  # removed by who found it


_WAIT = """
import signal, sys
from pathlib import Path
from offload.slot_waiters import WantMarkers
with WantMarkers(Path({directory!r}), "killed").waiting({key!r}, 1.0):
    print("waiting", flush=True)
    signal.pause()
"""


def _scans(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The directories ``os.scandir`` is asked for from now on."""
    scanned: list[str] = []
    scandir = os.scandir

    def counted(path: str) -> Iterator[os.DirEntry[str]]:
        scanned.append(str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", counted)
    return scanned


def test_the_slot_directory_is_scanned_again_only_once_it_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every slot request looks for markers, in a directory of every slot file Nix and offload
    # ever made here (943 files on this machine: 0.8 ms a scan).
    for n in range(3):
        (tmp_path / f"{KEY}-{n}").touch()
    past = time.time_ns() - 10 * SETTLED
    os.utime(tmp_path, ns=(past, past))
    scanned, me = _scans(monkeypatch), WantMarkers(tmp_path, "me")
    assert not any(me.waited_before(KEY, 1e12) for _ in range(5))
    assert len(scanned) == 1
    with WantMarkers(tmp_path, "other").waiting(KEY, 1.0):
        assert me.waited_before(KEY, 1e12)  # its marker changed the directory
        assert me.waited_before(KEY, 1e12)
    assert not me.waited_before(KEY, 1e12)
    assert len(scanned) == 4  # once before; at each look while it waited (too new), once after


def test_a_directory_changed_just_now_is_scanned_at_every_look(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A marker made in the clock tick of a scan's start may leave the mtime as it was.
    (tmp_path / f"{KEY}-0").touch()
    scanned, me = _scans(monkeypatch), WantMarkers(tmp_path, "me")
    assert not me.waited_before(KEY, 1e12)
    assert not me.waited_before(KEY, 1e12)
    assert len(scanned) == 2


def test_a_directory_whose_times_are_whole_seconds_is_not_trusted_as_settled_too_soon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On a file system that keeps whole seconds (ext4 with small inodes), a change made just
    # now reads as up to a second old: a scan trusted then missed a marker made in that second.
    (tmp_path / f"{KEY}-0").touch()
    now = time.time_ns()
    second = now - now % 1_000_000_000 - 1_000_000_000  # a second or two ago, rounded down
    os.utime(tmp_path, ns=(second, second))
    scanned, me = _scans(monkeypatch), WantMarkers(tmp_path, "me")
    assert not me.waited_before(KEY, 1e12)
    with WantMarkers(tmp_path, "other").waiting(KEY, 1.0):
        os.utime(tmp_path, ns=(second, second))  # the marker's change, in the same granule
        assert me.waited_before(KEY, 1e12)
    assert len(scanned) == 2
