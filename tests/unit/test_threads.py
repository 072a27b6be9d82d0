"""Threads offload starts block Ctrl-C, SIGTERM and SIGHUP, so that each goes to the main
thread; what they spawn takes them again. Masks are read as the kernel has them
(``/proc/self/task/TID/status``), with real threads, processes and an event loop."""

from __future__ import annotations

import asyncio
import io
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import pytest
from rich.console import Console

from offload import process
from offload.cli.interrupts import steady_runner
from offload.thread_pool import Executor, QuietRunner
from offload.threads import INTERRUPTS, blocked, start
from offload.ui.events import RunStarted
from offload.ui.tty import TtyRenderer

WANTED = {int(s) for s in INTERRUPTS}


def _signals(sig_blk: str) -> set[int]:
    """The signals a ``SigBlk:`` line of ``/proc/.../status`` names."""
    mask = int(sig_blk.split()[1], 16)
    return {n for n in range(1, 65) if mask >> (n - 1) & 1}


def _blocked_in(tid: int) -> set[int]:
    """The signals the kernel holds back from thread ``tid`` of this process."""
    status = Path(f"/proc/self/task/{tid}/status").read_text()
    (line,) = [line for line in status.splitlines() if line.startswith("SigBlk:")]
    return _signals(line)


def _own_mask() -> set[int]:
    return _blocked_in(threading.get_native_id())


def test_a_started_thread_blocks_them_and_its_creator_does_not() -> None:
    seen: Future[set[int]] = Future()
    start(threading.Thread(target=lambda: seen.set_result(_own_mask()))).join()
    assert seen.result() >= WANTED
    assert not _own_mask() & WANTED  # the main thread still takes them
    plain: Future[set[int]] = Future()
    thread = threading.Thread(target=lambda: plain.set_result(_own_mask()))
    thread.start()
    thread.join()
    assert not plain.result() & WANTED  # what offload.threads is for


def test_an_executors_threads_block_them() -> None:
    with Executor(max_workers=2) as pool:
        masks = [pool.submit(_own_mask) for _ in range(4)]
        assert all(m.result() >= WANTED for m in masks)
    assert not _own_mask() & WANTED


def test_a_process_a_blocking_thread_spawns_takes_them(tmp_path: Path) -> None:
    # A child inherits its spawner's mask across exec: Nix started from such a thread would
    # ignore a SIGTERM and a Ctrl-C.
    # (grep reads its own; a shell would not do: dash clears its mask as it starts.)
    def childs_mask() -> str:
        done = process.run(["grep", "SigBlk", "/proc/self/status"])
        started = process.Started(["grep", "SigBlk", "/proc/self/status"])
        return done.stdout + started.finish().stdout

    with Executor(max_workers=1) as pool:
        said = pool.submit(childs_mask).result()
    lines = said.splitlines()
    assert len(lines) == 2
    for line in lines:
        assert not _signals(line) & WANTED, line
    with blocked():  # and it is given back to a blocking spawner
        assert _own_mask() >= WANTED
        process.run(["true"])
        assert _own_mask() >= WANTED
    assert not _own_mask() & WANTED


def _tasks() -> set[int]:
    return {int(t.name) for t in Path("/proc/self/task").iterdir()}


# A command's runs, and the in-process hook's loop (offload.hook.serve).
@pytest.mark.parametrize("make", [steady_runner, QuietRunner])
def test_a_runs_threads_block_them_its_to_thread_and_its_child_waiters(
    make: Callable[[], asyncio.Runner],
) -> None:
    before = _tasks()  # the test runner's own threads, if any

    async def masks() -> dict[str, set[int]]:
        child = await asyncio.create_subprocess_exec("sleep", "30")
        try:
            # asyncio's own: a thread waits for each child on Python 3.11 (not on 3.12).
            found = {f"task {t}": _blocked_in(t) for t in _tasks() - before}
            found["to_thread"] = await asyncio.to_thread(_own_mask)
            return found
        finally:
            child.kill()
            await child.wait()

    with make() as runner:
        found = runner.run(masks())
    if sys.version_info < (3, 12):
        assert len(found) >= 2  # the child's waiter was there
    assert {name: mask & WANTED for name, mask in found.items()} == dict.fromkeys(found, WANTED)
    assert not _own_mask() & WANTED


def test_the_terminal_views_refresh_thread_blocks_them() -> None:
    # Where people press Ctrl-C: an idle thread redrawing the view must not take it.
    before = _tasks()
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    renderer = TtyRenderer(console, print_logs=False)
    renderer.handle(RunStarted("r", 5, ("fast",), 9.0, time.time(), (4.0,), (2,)))
    try:
        new = _tasks() - before
        assert new  # rich's refresh thread
        assert all(_blocked_in(t) >= WANTED for t in new)
    finally:
        renderer.close()


def test_a_runners_close_waits_for_a_busy_worker_from_a_thread_that_blocks_them() -> None:
    # asyncio's close waits for its executor's threads from a thread of its own, for as long
    # as a worker runs (an evaluation given up on): that thread, too, must not take a Ctrl-C.
    release, ready = threading.Event(), threading.Event()
    seen: list[set[int]] = []

    def watch() -> None:
        # The first thread close starts, while the worker still runs; then the worker goes.
        known = _tasks()  # this one and the busy worker among them
        ready.set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not seen:
            seen.extend(_blocked_in(t) for t in _tasks() - known)
        release.set()

    async def leave_busy() -> None:
        _ = asyncio.get_running_loop().run_in_executor(None, release.wait)  # left running

    runner = steady_runner()
    runner.run(leave_busy())
    watcher = threading.Thread(target=watch)
    watcher.start()
    ready.wait()
    runner.close()
    watcher.join()
    assert seen
    assert all(mask >= WANTED for mask in seen)


def test_a_runners_close_cleans_up_its_tasks_before_its_pool_goes() -> None:
    # asyncio's close cancels the tasks left, then waits for the pool: their clean-up may use it.
    cleaned: list[str] = []
    tasks: list[asyncio.Task[None]] = []

    async def left() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            cleaned.append(await asyncio.to_thread(str, "cleaned"))

    async def leave_one() -> None:
        tasks.append(asyncio.get_running_loop().create_task(left()))
        await asyncio.sleep(0)

    with QuietRunner() as runner:
        runner.run(leave_one())
    assert cleaned == ["cleaned"]
