"""Outputs fetched home from each machine in batches, one fetch at a time per machine.

Fetching a small output home is mostly round trips (what the local store lacks, the closure,
the path infos, the export stream and its answer), and every fetch borrowed a session of its
own on the builder, where it competed with the builds for the link's sessions. So a machine's
outputs come home one fetch at a time: those of the builds that end while a fetch is on its
way wait for it, and then go together, one set of questions and one export stream for all of
them, on one session.

There is no task of its own: each build's fetch (the executor's task) waits for the machine's
lock; the one that gets it takes every output asked for by then and fetches them, and leaves
each other build's result (its bytes, or the batch's error) for that build to pick up when it
gets the lock in turn. A fetch cancelled while it carries others' outputs gives them back to
the queue, so the next one takes them. What a batch moved is told per build: the NAR sizes of
the build's own outputs, and the rest of the closure counted for the first build in the batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from offload.protocol.serve import PathInfo

__all__ = ["HomeBatches"]

# Fetches ``paths`` home from the named machine: the infos of what it copied.
Fetch = Callable[[str, Sequence[str]], Awaitable[Sequence[PathInfo]]]


@dataclass
class _Machine:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    queued: dict[str, tuple[str, ...]] = field(default_factory=dict)  # drv -> its outputs
    waiting: set[str] = field(default_factory=set)  # builds whose fetch is waiting or running
    results: dict[str, int | BaseException] = field(default_factory=dict)


class HomeBatches:
    """``fetch(machine, drv, outputs)``: the outputs made valid here; the bytes told for it."""

    def __init__(self, fetch: Fetch) -> None:
        self._fetch = fetch
        self._machines: dict[str, _Machine] = {}

    async def fetch(self, machine: str, drv_path: str, outputs: Sequence[str]) -> int:
        state = self._machines.setdefault(machine, _Machine())
        state.queued[drv_path] = tuple(outputs)
        state.waiting.add(drv_path)
        try:
            async with state.lock:
                if drv_path not in state.results:  # not fetched by an earlier batch
                    await self._batch(machine, state)
                result = state.results.pop(drv_path)
        finally:
            # Cancelled: nothing of it is left for a later fetch of the same build to find.
            state.waiting.discard(drv_path)
            state.queued.pop(drv_path, None)
            state.results.pop(drv_path, None)
        if isinstance(result, BaseException):
            raise result
        return result

    async def _batch(self, machine: str, state: _Machine) -> None:
        batch, state.queued = state.queued, {}
        try:
            copied = await self._fetch(machine, [p for paths in batch.values() for p in paths])
        except asyncio.CancelledError:
            state.queued.update(batch)  # the others' outputs go with the next batch
            raise
        except Exception as exc:  # noqa: BLE001 - each build of the batch meets it
            state.results.update(dict.fromkeys(batch.keys() & state.waiting, exc))
            return
        told = _bytes_per_build(batch, copied)
        state.results.update({drv: told[drv] for drv in batch.keys() & state.waiting})


def _bytes_per_build(
    batch: dict[str, tuple[str, ...]], copied: Sequence[PathInfo]
) -> dict[str, int]:
    sizes = {info.path: info.nar_size for info in copied}
    told = {drv: sum(sizes.pop(p, 0) for p in outputs) for drv, outputs in batch.items()}
    first = next(iter(told))
    told[first] += sum(sizes.values())
    return told
