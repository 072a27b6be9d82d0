"""Paths on their way to a store, so that two copies to one builder never send a path twice.

Builds that start together on a builder often share inputs (a toolchain, a source tarball).
Each copy asks the builder what it lacks and sends that, and until the first copy's import
ends a path is not valid there: the second copy sent it again (a tester: a 3 MB input sent
once per build, as many times as the builder has slots; Nix's own hook sends it once). So a
copy claims the paths it is about to send to a store (``claimed``); another copy that would
send some of them waits until those claims end, asks the store again which of them it holds
now, and sends only the rest (all of them, if the first copy was cut off).

A claim is taken in one step, with nothing awaited between looking and claiming, and a copy
waits only before it claims anything: two copies never wait for each other.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

from offload.protocol.serve import PathInfo, StoreClient

__all__ = ["InFlight"]


class InFlight:
    """The paths each store is being sent, by the copy sending them."""

    def __init__(self) -> None:
        self._claims: dict[tuple[str, str], asyncio.Future[None]] = {}

    @contextlib.asynccontextmanager
    async def claimed(
        self, target: str, to: StoreClient, infos: Sequence[PathInfo]
    ) -> AsyncIterator[Sequence[PathInfo]]:
        """What of ``infos`` (dependencies first) this copy is to send to ``target`` (whose
        session is ``to``), claimed for the body: what no other copy is sending it, nor sent
        it while this one waited."""
        infos = await self._wait_for_others(target, to, infos)
        mine = {info.path: asyncio.get_running_loop().create_future() for info in infos}
        for path, done in mine.items():
            self._claims[(target, path)] = done
        try:
            yield infos
        finally:
            for path, done in mine.items():
                done.set_result(None)
                del self._claims[(target, path)]

    async def _wait_for_others(
        self, target: str, to: StoreClient, infos: Sequence[PathInfo]
    ) -> Sequence[PathInfo]:
        while True:
            theirs = {
                info.path: claim
                for info in infos
                if (claim := self._claims.get((target, info.path))) is not None
            }
            if not theirs:
                return infos
            await asyncio.wait(set(theirs.values()))
            arrived = await to.query_valid_paths(theirs)
            infos = [info for info in infos if info.path not in arrived]
