"""Copying over two lanes (``offload.protocol.lanes``): units, when a lane pays, and the real
ServeClient copying into FakeStore sessions over two connections, references first."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import pytest

from offload.errors import ProtocolError
from offload.protocol import lanes
from offload.protocol.lanes import copy_in_lanes, units, worth_lanes
from offload.protocol.serve import PathInfo, ServeClient, topo_sort_infos
from offload.transport.fake import FakePath, FakeStore, store_path

T = TypeVar("T")
GUARD = 10.0  # seconds; only a guard against hangs
KiB = 1024


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, GUARD))


def info(name: str, size: int, *refs: str) -> PathInfo:
    return PathInfo(store_path(name), None, refs, size, "sha256:" + "0" * 52)


@pytest.fixture
def small_lanes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lanes sized for in-memory NARs: a path of 64 KiB is large, 128 KiB of them pay."""
    monkeypatch.setattr(lanes, "LANE_PATH", 64 * KiB)
    monkeypatch.setattr(lanes, "LANE_BYTES", 128 * KiB)


def test_large_paths_go_alone_and_runs_of_small_ones_together(small_lanes: None) -> None:
    sizes = [("a", 1), ("b", 2), ("l1", 99 * KiB), ("c", 3), ("l2", 70 * KiB)]
    a, b, c, d, e = (info(name, size) for name, size in sizes)
    assert units([a, b, c, d, e]) == [[a, b], [c], [d], [e]]
    assert units([c, e]) == [[c], [e]]
    assert units([]) == []


def test_a_lane_pays_for_two_large_paths_of_enough_bytes(small_lanes: None) -> None:
    big, half = info("big", 100 * KiB), info("half", 64 * KiB)
    assert worth_lanes([big, half])
    assert not worth_lanes([big])  # one large path cannot be split
    assert not worth_lanes([half, info("half2", 64 * KiB - 1), info("s", 63 * KiB)])
    assert not worth_lanes([info("x", 64 * KiB), info("y", 64 * KiB - 1)])  # 1 byte short


def _paths() -> list[FakePath]:
    """Large paths with references between them and to small ones, and one unrelated; the
    first two depend one on the other, so a second lane must wait for the first."""
    big = "x" * (256 * KiB)
    large_b = FakePath.from_text(store_path("large-b"), big + "b")
    large_c = FakePath.from_text(store_path("large-c"), big + "c", references=[large_b.path])
    small_d = FakePath.from_text(store_path("small-d"), "d\n", references=[large_c.path])
    large_e = FakePath.from_text(store_path("large-e"), big + "e")
    large_f = FakePath.from_text(store_path("large-f"), big + "f", references=[small_d.path])
    small_a = FakePath.from_text(store_path("small-a"), "a\n")
    return [large_b, large_c, small_d, large_e, large_f, small_a]


class Recording:
    """A destination session that records which paths it was given (the copy under test calls
    only ``add_paths`` on it)."""

    def __init__(self, client: ServeClient) -> None:
        self.client = client
        self.added: list[str] = []

    async def add_paths(self, items: Sequence[tuple[PathInfo, Any]], **kwargs: Any) -> None:
        self.added += [i.path for i, _ in items]
        await self.client.add_paths(items, **kwargs)


def test_two_lanes_copy_everything_each_unit_after_its_references(small_lanes: None) -> None:
    paths = _paths()
    src_store, dst_store = FakeStore("src", paths), FakeStore("dst")

    async def go() -> tuple[Recording, Recording, int]:
        async with (
            src_store.connect() as src1,
            src_store.connect() as src2,
            dst_store.connect() as dst1,
            dst_store.connect() as dst2,
        ):
            infos = topo_sort_infos(await src1.query_path_infos([p.path for p in paths]))
            one, two = Recording(dst1), Recording(dst2)
            moved = await copy_in_lanes([(src1, one), (src2, two)], infos)  # type: ignore[list-item]
            return one, two, moved

    one, two, moved = run(go())
    # The store refuses a path whose references it lacks: every one arrived, so the order held.
    assert sorted(dst_store.received) == sorted(p.path for p in paths)
    for p in paths:
        assert dst_store.paths[p.path].nar == p.nar
    assert moved == sum(p.info().nar_size for p in paths)
    assert one.added  # both lanes carried paths
    assert two.added
    assert sorted(one.added + two.added) == sorted(dst_store.received)


def test_a_lane_that_fails_fails_the_copy_and_stops_the_other(small_lanes: None) -> None:
    paths = _paths()
    src_store, dst_store = FakeStore("src", paths), FakeStore("dst")

    async def go() -> None:
        async with (
            src_store.connect() as src1,
            src_store.connect() as src2,
            dst_store.connect() as dst1,
        ):
            dst2 = await dst_store.open_client()
            infos = topo_sort_infos(await src1.query_path_infos([p.path for p in paths]))
            dst_store.break_next("add-to-store")
            with pytest.raises(ProtocolError):
                await copy_in_lanes([(src1, dst1), (src2, dst2)], infos)
            # No lane of the copy is left running.
            lanes_left = [t for t in asyncio.all_tasks() if "copy_in_lanes" in repr(t.get_coro())]
            assert lanes_left == []

    run(go())
    # What arrived arrived whole; the path cut off mid-NAR was not registered.
    for path in dst_store.received:
        assert dst_store.paths[path].nar == next(p.nar for p in paths if p.path == path)
    assert len(dst_store.received) < len(paths)
