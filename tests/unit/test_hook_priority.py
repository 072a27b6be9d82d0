"""Where a derivation waits in the coordinator's queue (``HookContext.priority``): its work and
the work history saw built on it (``history.tails``), read through the coordinator's ``Keep``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from pathlib import Path

import pytest

from offload.history.db import History
from offload.history.nix_logs import default_drvs_dir
from offload.history.records import BuildRecord
from offload.hook.context import HookContext, load_context
from offload.hook.keep import Keep
from offload.hook.wire import HookIO, TryRequest
from offload.scheduler.run import DEFAULT_WORK
from tests.helpers.nix_logs import nix_log

H = "0" * 32


def _drv(name: str) -> str:
    return f"/nix/store/{H}-{name}.drv"


def _chain_context(tmp_path: Path, speed: int) -> HookContext:
    """A coordinator's context with one builder "m" of ``speed``, whose history has c built
    on b and b on a, in 1, 2 and 8 s there; the coordinator's history stays open."""
    keep = Keep(tmp_path)
    history = keep.history()
    for name, seconds, inputs in (("a", 1.0, ()), ("b", 2.0, ("a",)), ("c", 8.0, ("b",))):
        record = BuildRecord(f"hook-{name}", _drv(name), name, "m", 0.0, seconds, "built")
        history.record([record], deps={_drv(name): tuple(map(_drv, inputs))})
    builders = f"ssh://m x86_64-linux - 1 {speed}"
    return load_context(
        {"max-jobs": "0", "system": "x86_64-linux", "builders": builders},
        state=tmp_path, verbosity=0, env={}, io=HookIO(lambda _b: None, lambda _b: None),
        parent=os.getpid(), keep=keep,
    )  # fmt: skip


def ask(name: str) -> TryRequest:
    return TryRequest(False, "x86_64-linux", _drv(name), frozenset())


def test_a_derivation_with_work_built_on_it_waits_ahead_of_its_work(tmp_path: Path) -> None:
    # c was built on b, b on a: 8 s and 2 s of work at speed 1 (machine "m", speed 1).
    context = _chain_context(tmp_path, speed=1)
    history = context.keep.history()

    assert context.priority(ask("a"), 1.0) == 1.0 + 2.0 + 8.0
    assert context.priority(ask("b"), 2.0) == 2.0 + 8.0
    assert context.priority(ask("c"), 8.0) == 8.0  # nothing seen built on it
    assert context.priority(ask("new"), 10.0) == 10.0  # a name history has not seen
    history.close()


def test_tails_are_read_again_in_a_thread_while_the_last_ones_serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keep = Keep(tmp_path)
    history = keep.history()
    speeds = {"m": 1.0}

    def built(name: str, seconds: float, inputs: tuple[str, ...]) -> None:
        record = BuildRecord(f"hook-{name}", _drv(name), name, "m", 0.0, seconds, "built")
        history.record([record], deps={_drv(name): tuple(map(_drv, inputs))})

    built("a", 1.0, ())
    built("b", 2.0, ("a",))
    first = keep.tails(speeds)  # the first read: at once, no event loop needed
    assert first == {"a": 2.0, "b": 0.0}
    built("c", 8.0, ("b",))
    monkeypatch.setattr("offload.hook.keep.TAILS_SECONDS", -1.0)  # every call finds them old

    def under_way() -> asyncio.Task[None] | None:
        return keep.tails_reading

    async def read_again() -> None:
        assert keep.tails(speeds) is first  # the last read serves while the next runs
        reading = under_way()
        assert reading is not None
        assert keep.tails(speeds) is first
        assert under_way() is reading  # one read at a time
        await reading
        assert under_way() is None
        assert keep.tails(speeds) == {"a": 2.0 + 8.0, "b": 8.0, "c": 0.0}
        await keep.aclose()  # cancels the read that call started

    asyncio.run(read_again())


def test_old_history_is_forgotten_in_the_reads_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keep = Keep(tmp_path)
    long_ago = time.time() - 200 * 86_400
    old = BuildRecord("hook-old", _drv("old"), "old", "m", long_ago, long_ago + 1, "failed")
    keep.history().record([old], deps={_drv("old"): (_drv("a"),)})
    assert keep.tails({"m": 1.0}) == {"a": DEFAULT_WORK, "old": 0.0}  # the first read: no pass
    assert keep.history().builds(limit=None) == [old]
    monkeypatch.setattr("offload.hook.keep.TAILS_SECONDS", -1.0)

    async def read_again() -> None:
        keep.tails({"m": 1.0})
        reading = keep.tails_reading
        assert reading is not None
        await reading
        await keep.aclose()

    asyncio.run(read_again())
    with History(tmp_path / "history.sqlite") as history:
        assert history.builds(limit=None) == []  # edges go by count (KEEP_EDGES), not age


def _written_by_a_newer_offload(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA user_version = 99")


def test_a_history_that_cannot_be_read_orders_nothing_and_stops_nothing(tmp_path: Path) -> None:
    history = History(tmp_path / "history.sqlite")
    history.close()
    _written_by_a_newer_offload(tmp_path / "history.sqlite")
    assert Keep(tmp_path).tails({"m": 1.0}) == {}


def test_a_read_again_that_fails_keeps_the_last_tails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keep = Keep(tmp_path)
    record = BuildRecord("hook-b", _drv("b"), "b", "m", 0.0, 2.0, "built")
    keep.history().record([record], deps={_drv("b"): (_drv("a"),)})
    first = keep.tails({"m": 1.0})
    assert first == {"a": 2.0, "b": 0.0}
    _written_by_a_newer_offload(tmp_path / "history.sqlite")
    monkeypatch.setattr("offload.hook.keep.TAILS_SECONDS", -1.0)

    async def read_again() -> None:
        keep.tails({"m": 1.0})
        reading = keep.tails_reading
        assert reading is not None
        await reading
        assert keep.tails({"m": 1.0}) is first
        await keep.aclose()

    asyncio.run(read_again())


def test_only_a_derivation_history_knows_gets_room_from_its_nix_builds_paths(
    tmp_path: Path,
) -> None:
    context = _chain_context(tmp_path, speed=2)
    history = context.keep.history()
    assert context.measured_work(ask("c")) == 8.0 * 2  # 8 s on a machine of speed 2
    assert context.measured_work(ask("new")) is None  # a guess gets no room below

    t = time.time()  # the hook's clock: a build's real end is read from it
    assert (
        context.room(ask("c"), 8.0, 8.0, now=t, measured=True) is None
    )  # nothing of its placed yet
    # b is declined (built here), to end at t + 10 with 8 of work after it (speed 2): its path
    # ends at t + 14.
    context.declined(ask("b"), t + 10, tail=8.0)
    # c: 14 s left at speed 2 is 28 of work; c's path is its own 8, so 20 to spare.
    assert context.room(ask("c"), 8.0, 8.0, now=t, measured=True) == pytest.approx(
        t + 0.5 * (20 + 8) / 2
    )
    assert (
        context.room(ask("new"), 10.0, 10.0, now=t, measured=False) is None
    )  # a guess gets no room
    # Work known, tail not seen: a name nothing was recorded after or before.
    lone = BuildRecord("hook-lone", _drv("lone"), "lone", "m", 0.0, 3.0, "built")
    history.record([lone])
    assert context.room(ask("lone"), 3.0, 3.0, now=t, measured=True) is None
    assert (
        context.room(ask("c"), 8.0, 8.0, now=t + 14, measured=True) is None
    )  # b's path's end has passed
    # a is built elsewhere, expected to end at t + 100 with 30 of work after it: its path
    # ends at t + 115; then its build ends now, far sooner: the path is from now on.
    with context.building(ask("a"), t + 100, tail=30.0):
        assert context.room(ask("c"), 8.0, 8.0, now=t, measured=True) == pytest.approx(
            t + 0.5 * (115 * 2 - 8 + 8) / 2
        )
    ended = time.time()
    assert context.room(ask("c"), 8.0, 8.0, now=ended, measured=True) == pytest.approx(
        ended + 0.5 * (30 - 8 + 8) / 2, abs=0.01
    )
    history.close()


def test_a_name_history_lacks_is_measured_by_nix_s_log_at_the_fastest_speed(
    tmp_path: Path,
) -> None:
    # NIX_LOG_DIR is this test's own (tests/conftest.py): the coordinator reads it.
    nix_log(default_drvs_dir(), "logged-1.0", 3.0)
    context = _chain_context(tmp_path, speed=2)
    assert context.measured_work(ask("logged-2.0")) == pytest.approx(3.0 * 2)
    assert context.estimate(ask("logged-2.0")).measured
    assert context.measured_work(ask("c")) == 8.0 * 2  # history's, as before
    assert not context.estimate(ask("new")).measured
    context.keep.history().close()
