"""Copying paths over two connections to the same store at once: lanes.

ssh compresses (``-C``, a machine's ``compress=true``) in the one process that owns the
connection, on one core: a compressed copy of a large closure moves at that core's zlib rate
(tens of MB/s), however fast the link. A second connection to the same store compresses on
another core. ``copy_in_lanes`` cuts the paths into units, each large path alone and each run
of consecutive small ones together (one export stream, as ``add_paths`` sends them), and each
lane takes the first unit, in dependency order, whose references have all arrived: a store
refuses a path whose references it does not have yet, so a unit waits for the units holding its
references. A lane that fails fails the copy: the others are stopped, and what a store had
registered stays, whole, as after a copy over one connection cut off at the same point.

A second connection costs an ssh login, so it is opened only when the large paths are worth
it (``worth_lanes``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from offload.protocol.records import PathInfo
from offload.protocol.store import StoreClient, copy_paths
from offload.tasks import cancel_and_wait

__all__ = ["LANE_BYTES", "LANE_PATH", "Lane", "copy_in_lanes", "units", "worth_lanes"]

# A path this large travels alone, on whichever lane is free.
LANE_PATH = 4 * 1024 * 1024
# Bytes of large paths that pay for a second login: at a core's zlib rate (about 40 MB/s
# here) they take most of a second over one connection, a login a few tenths.
LANE_BYTES = 32 * 1024 * 1024

Lane = tuple[StoreClient, StoreClient]  # (source, destination)


def worth_lanes(infos: Sequence[PathInfo]) -> bool:
    """Whether a second lane pays: at least two large paths, ``LANE_BYTES`` of them in all."""
    large = [info.nar_size for info in infos if info.nar_size >= LANE_PATH]
    return len(large) >= 2 and sum(large) >= LANE_BYTES


def units(infos: Sequence[PathInfo]) -> list[list[PathInfo]]:
    """``infos`` (dependencies first) cut into what one lane sends at a time: each large path
    alone, each run of consecutive small ones together."""
    cut: list[list[PathInfo]] = []
    for info in infos:
        if info.nar_size >= LANE_PATH or not cut or cut[-1][-1].nar_size >= LANE_PATH:
            cut.append([info])
        else:
            cut[-1].append(info)
    return cut


async def copy_in_lanes(lanes: Sequence[Lane], infos: Sequence[PathInfo]) -> int:
    """Copy ``infos`` (dependencies first, ``topo_sort_infos``) from each lane's source to its
    destination, every lane busy while a unit can go; returns the bytes moved."""
    cut = units(infos)
    unit_of = {info.path: k for k, unit in enumerate(cut) for info in unit}
    needs = [
        {unit_of[ref] for info in unit for ref in info.references if ref in unit_of} - {k}
        for k, unit in enumerate(cut)
    ]
    pending = list(range(len(cut)))
    done: set[int] = set()
    arrived = asyncio.Condition()

    async def lane(src: StoreClient, dst: StoreClient) -> None:
        while True:
            async with arrived:
                # The first pending unit has every need sent or on its way: one waits for the
                # units in flight, never for nothing.
                await arrived.wait_for(
                    lambda: not pending or any(needs[k] <= done for k in pending)
                )
                if not pending:
                    return
                k = next(k for k in pending if needs[k] <= done)
                pending.remove(k)
            await copy_paths(src, dst, cut[k])
            async with arrived:
                done.add(k)
                arrived.notify_all()

    tasks = [asyncio.create_task(lane(src, dst)) for src, dst in lanes]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        # Done, or one failed (or the caller was cancelled): the rest stop mid-unit.
        errors = await cancel_and_wait(tasks)
    if errors:
        raise errors[0]
    return sum(info.nar_size for info in infos)
