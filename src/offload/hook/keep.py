"""What outlives one hook: sessions to the builders and to the local store, and the history.

The coordinator keeps one ``Keep`` for every hook it serves, with the dispatch where accepted
derivations wait for a builder slot (``offload.hook.dispatch``); a hook served in its own
process keeps one for itself, without a dispatch (nor builders known full:
``offload.hook.full``). Each thing in it costs something to open that a derivation should not
pay every time: a serve session on a builder (an ssh round trip and a remote ``nix-store``
start, ``offload.hook.links``), a local ``nix-store --serve`` to read inputs from (a process
start), and the history database (a connection and its schema check).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path

from offload.errors import OffloadError
from offload.history.db import History
from offload.history.tails import name_of, tails
from offload.hook.dispatch import Dispatch
from offload.hook.full import FullBuilders
from offload.hook.links import BuilderLinks
from offload.hook.loads import HookLoads
from offload.load import local_boot_id
from offload.protocol.serve import StoreClient
from offload.scheduler.run import DEFAULT_WORK
from offload.transport.links import LocalLink

__all__ = ["TAILS_SECONDS", "Keep"]

# Local sessions lent at once: each accepted build reads its inputs through one.
_LOCAL_SESSIONS = 8
# How long the tails read from history serve before they are read again (new edges, estimates).
TAILS_SECONDS = 60.0


class Keep:
    def __init__(self, state: Path, *, queue: bool = False) -> None:
        self.state = state
        # Builders' load, followed only by a coordinator (``offload.hook.loads`` says why).
        self.loads = HookLoads(state, local_boot_id()) if queue else None
        self.links = BuilderLinks(state, self.loads)
        # Accepted derivations waiting for a slot: only a coordinator can keep them (``queue``).
        self.dispatch = Dispatch() if queue else None
        # Builders full of other clients' builds, and their probes (``offload.hook.full``).
        self.full = FullBuilders(self.links, self.dispatch.notify) if self.dispatch else None
        self._local: LocalLink | None = None
        self._history: History | None = None
        self._tails: tuple[float, Mapping[str, float]] | None = None  # when read, and what

    def tails(
        self, estimate: Callable[[Iterable[str]], Mapping[str, float]]
    ) -> Mapping[str, float]:
        """Each name's tail (``history.tails``) from the edges history holds, with ``estimate``'s
        work (a guess where it has none); read again after ``TAILS_SECONDS``."""
        now = time.monotonic()
        if self._tails is None or now - self._tails[0] > TAILS_SECONDS:
            try:
                edges = self.history().recent_deps()
                known = estimate({n for edge in edges for p in edge if (n := name_of(p))})
            except OffloadError:
                edges, known = [], {}
            self._tails = (now, tails(edges, lambda name: known.get(name, DEFAULT_WORK)))
        return self._tails[1]

    def history(self) -> History:
        """The state directory's history database, opened on first use (``StoreError``)."""
        if self._history is None:
            self._history = History(self.state / "history.sqlite")
        return self._history

    @contextlib.asynccontextmanager
    async def local(self, env: Mapping[str, str]) -> AsyncIterator[StoreClient]:
        """A session on the local store (the first hook's environment opens it)."""
        if self._local is None:
            self._local = LocalLink(max_sessions=_LOCAL_SESSIONS, env=env)
        async with self._local.session() as client:
            yield client

    def took(self, machine: str) -> None:
        """One of our builds took a slot of ``machine`` on this host: its load is partly ours."""
        if self.loads is not None:
            self.loads.started(machine)

    def released(self, machine: str) -> None:
        """One of our builds gave its slot of ``machine`` back: waiting derivations may take it."""
        if self.loads is not None:
            self.loads.ended(machine)
        if self.dispatch is not None:
            self.dispatch.notify()

    async def aclose(self) -> None:
        try:
            if self.dispatch is not None:
                await self.dispatch.aclose()
            if self.full is not None:
                await self.full.aclose()
            await self.links.aclose()
            if self._local is not None:
                await self._local.aclose()
        finally:
            if self.loads is not None:
                self.loads.forget()
            if self._history is not None:
                self._history.close()
