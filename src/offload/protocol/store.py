"""A store session whichever protocol it speaks, and copying paths between two of them.

The model: everything above the protocol layer (scheduler, hook, build) talks to a store through
``StoreClient``, which both ``ServeClient`` (``nix-store --serve --write``, ``ssh://``) and
``WorkerClient`` (``nix-daemon --stdio``, ``ssh-ng://``) satisfy. Where the two protocols
differ, the client decides: how paths are received (``add_paths``: one export stream over
serve, AddMultipleToStore over the daemon) and whether build phases are reported (``on_phase``,
the daemon only).

``copy_paths`` streams paths from one client into another, never holding a NAR whole, in the
order ``topo_sort_infos`` gives (dependencies first). From the local store, the receiving
client may have the local ``nix-store`` write them straight into its connection
(``offload.protocol.export``): the bulk bytes then never pass through this process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial
from typing import Protocol

from offload.errors import StoreError
from offload.protocol.client import NarProducer, Sink
from offload.protocol.export import Exporter
from offload.protocol.records import BuildOptions, BuildResult, PathInfo
from offload.store.drv import Derivation

__all__ = ["NarProducer", "Sink", "StoreClient", "also_heard", "copy_paths", "topo_sort_infos"]


class StoreClient(Protocol):
    """One handshaken session on a store, in either protocol (module docstring)."""

    name: str
    server_version: int | None
    # A session on the local store: its nix-store can write what it sends (protocol.export).
    exporter: Exporter | None
    on_log: Callable[[str], None] | None
    # (drv path, phase) as the builder enters a phase; never called over the serve protocol.
    on_phase: Callable[[str, str], None] | None

    @property
    def usable(self) -> bool: ...
    async def handshake(self, *, sent: bool = False) -> int: ...
    async def query_valid_paths(
        self, paths: Iterable[str], *, lock: bool = False, substitute: bool = False
    ) -> set[str]: ...
    async def query_path_infos(self, paths: Iterable[str]) -> dict[str, PathInfo]: ...
    async def query_closure(
        self, paths: Iterable[str], *, include_outputs: bool = False
    ) -> set[str]: ...
    async def dump_store_path(
        self, path: str, sink: Sink, *, limit: int | None = None, said: PathInfo | None = None
    ) -> int: ...
    async def add_to_store_nar(self, info: PathInfo, nar: NarProducer) -> None: ...
    async def add_paths(
        self, items: Sequence[tuple[PathInfo, NarProducer]], *, exporter: Exporter | None = None
    ) -> None: ...
    async def build_derivation(
        self,
        drv_path: str,
        drv: Derivation,
        *,
        input_srcs: Iterable[str] | None = None,
        options: BuildOptions = ...,
    ) -> BuildResult: ...
    async def close(self) -> None: ...


@contextlib.contextmanager
def also_heard(client: StoreClient, handler: Callable[[str], None]) -> Iterator[None]:
    """``client``'s log lines go to ``handler`` too while the block runs, and still to the
    hearer it had (a lent session's, which notes when its peer last spoke); that one alone
    again after it."""
    kept = client.on_log

    def both(line: str) -> None:
        if kept is not None:
            kept(line)
        handler(line)

    client.on_log = both
    try:
        yield
    finally:
        client.on_log = kept


def topo_sort_infos(infos: Mapping[str, PathInfo]) -> list[PathInfo]:
    """Order ``infos`` dependencies first, ignoring references outside it and self-references."""
    done: set[str] = set()
    on_stack: set[str] = set()
    order: list[PathInfo] = []
    for root in sorted(infos):
        if root in done:
            continue
        # Iterative DFS: closures can be deep enough to hit Python's recursion limit.
        stack: list[tuple[str, Iterable[str]]] = [(root, iter(sorted(infos[root].references)))]
        on_stack.add(root)
        while stack:
            path, refs = stack[-1]
            for ref in refs:
                if ref == path or ref not in infos or ref in done:
                    continue
                if ref in on_stack:
                    raise StoreError(f"reference cycle between {path} and {ref}")
                on_stack.add(ref)
                stack.append((ref, iter(sorted(infos[ref].references))))
                break
            else:
                stack.pop()
                on_stack.discard(path)
                done.add(path)
                order.append(infos[path])
    return order


async def copy_paths(src: StoreClient, dst: StoreClient, infos: Sequence[PathInfo]) -> int:
    """Stream the paths from ``src`` into ``dst`` in the order given; returns the bytes moved.

    Give the paths dependencies first (``topo_sort_infos``): a store refuses a path whose
    references it does not have yet. ``dst`` chooses how they travel (``add_paths``).
    """
    if src is dst:
        raise ValueError("cannot copy a connection's paths onto itself")
    # Each NAR held to the size its source said: a longer one is refused as it arrives, and
    # one of another size or hash once through (Nix's own importPaths computes the hash of
    # what arrives, and registers that). A narSize of 0 is Nix's "unknown" (a path registered
    # without one): the importer counts it.
    items = [
        (info, partial(src.dump_store_path, info.path, limit=info.nar_size or None, said=info))
        for info in infos
    ]
    await dst.add_paths(items, exporter=src.exporter)
    return sum(info.nar_size for info in infos)
