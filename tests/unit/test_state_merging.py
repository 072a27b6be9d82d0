"""Two processes saving backoff at once each keep the other's entries: a hook's coordinator
and an ``offload build`` both merge into backoff.json, and without a lock one's read-merge-
write lost what the other wrote between its read and its write."""

from __future__ import annotations

import multiprocessing
import stat
import time
from multiprocessing.synchronize import Barrier
from pathlib import Path

from offload.backoff import Health, change_backoff, load_backoff, save_backoff

ENTRIES = 60


def _save_many(path: str, prefix: str, start: float, barrier: Barrier) -> None:
    barrier.wait()  # both begin together
    for i in range(ENTRIES):
        save_backoff(Path(path), {f"{prefix}{i}": Health(1, start + 600)}, start)


def test_concurrent_saves_keep_every_entry(tmp_path: Path) -> None:
    path = tmp_path / "state" / "backoff.json"
    start = time.time()
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    savers = [context.Process(target=_save_many, args=(str(path), p, start, barrier)) for p in "ab"]
    for saver in savers:
        saver.start()
    for saver in savers:
        saver.join(60)
        assert saver.exitcode == 0
    kept = load_backoff(path, start)
    assert sorted(kept) == sorted(f"{p}{i}" for p in "ab" for i in range(ENTRIES))
    lock = path.with_name(".backoff.json.lock")
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600


def _fail_many(path: str, start: float, barrier: Barrier) -> None:
    barrier.wait()

    def failed(current: Health | None) -> Health:
        failures = (current.failures if current is not None else 0) + 1
        return Health(failures, start + 600, "refused")

    for _ in range(ENTRIES):
        change_backoff(Path(path), "b", failed, start)


def test_failures_counted_at_once_by_two_processes_are_all_counted(tmp_path: Path) -> None:
    # The hook read a builder's failures, then saved them plus one: two hooks failing there
    # at once counted one failure for two (one step less of backoff).
    path = tmp_path / "state" / "backoff.json"
    start = time.time()
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    failing = [context.Process(target=_fail_many, args=(str(path), start, barrier)) for _ in "ab"]
    for process in failing:
        process.start()
    for process in failing:
        process.join(60)
        assert process.exitcode == 0
    assert load_backoff(path, start)["b"].failures == 2 * ENTRIES
