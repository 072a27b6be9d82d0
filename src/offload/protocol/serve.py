"""The serve protocol's public face, and copying paths between two stores over it.

The protocol lives in sibling modules, each with its own model: ``wire`` (integers and strings),
``records`` (op codes, path infos, build options and results), ``drv_wire`` (derivations as
BuildDerivation sends them), ``stderr`` (the remote's log lines and errors) and ``client`` (one
``ServeClient`` per connection). Their public names are re-exported here.

What stays here is ``copy_paths``: it streams paths from one ``ServeClient`` into another,
never holding a NAR whole, in the order ``topo_sort_infos`` gives (dependencies first).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import partial

from offload.errors import StoreError
from offload.protocol.client import CLIENT_HELLO, SERVER_HELLO, NarProducer, ServeClient, Sink
from offload.protocol.drv_wire import encode_basic_derivation
from offload.protocol.records import (
    CLIENT_VERSION,
    EXPORT_MAGIC,
    SERVE_MAGIC_1,
    SERVE_MAGIC_2,
    BuildOptions,
    BuildResult,
    BuildStatus,
    Op,
    PathInfo,
    sorted_paths,
)
from offload.protocol.stderr import strip_ansi
from offload.protocol.wire import ByteWriter, encode_int, encode_str, encode_strs

__all__ = [
    "CLIENT_HELLO",
    "CLIENT_VERSION",
    "EXPORT_MAGIC",
    "SERVER_HELLO",
    "SERVE_MAGIC_1",
    "SERVE_MAGIC_2",
    "BuildOptions",
    "BuildResult",
    "BuildStatus",
    "ByteWriter",
    "NarProducer",
    "Op",
    "PathInfo",
    "ServeClient",
    "Sink",
    "copy_paths",
    "encode_basic_derivation",
    "strip_ansi",
    "topo_sort_infos",
]


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


# Paths up to this size travel in one ImportPaths stream; Nix 2.8's importer holds each NAR in
# memory until it is complete, so a cut stream leaves nothing on the receiver's disk. Larger
# ones go by AddToStoreNar, which unpacks straight into the store: if that is cut, an
# unregistered partial directory stays until Nix next writes that path.
IMPORT_LIMIT = 512 * 1024 * 1024


async def copy_paths(src: ServeClient, dst: ServeClient, infos: Sequence[PathInfo]) -> int:
    """Stream the paths from ``src`` into ``dst`` in the order given; returns the bytes moved.

    Give the paths dependencies first (``topo_sort_infos``): the remote refuses a path whose
    references it does not have yet. Runs of paths below ``IMPORT_LIMIT`` go as one export
    stream (one round trip for the lot); a larger path goes on its own by AddToStoreNar.
    """
    if src is dst:
        raise ValueError("cannot copy a connection's paths onto itself")
    moved = 0
    batch: list[PathInfo] = []
    for info in [*infos, None]:
        if info is not None and info.nar_size <= IMPORT_LIMIT:
            batch.append(info)
            continue
        if batch:
            await dst.import_paths(partial(_export_stream, src, list(batch)))
            moved += sum(i.nar_size for i in batch)
            batch.clear()
        if info is not None:
            await dst.add_to_store_nar(info, partial(src.dump_store_path, info.path))
            moved += info.nar_size
    return moved


async def _export_stream(src: ServeClient, infos: Sequence[PathInfo], sink: Sink) -> None:
    """``nix-store --export`` of ``infos`` (section 3.2), NARs streamed from ``src``."""
    for info in infos:
        await sink(encode_int(1))
        await src.dump_store_path(info.path, sink)
        await sink(
            encode_int(EXPORT_MAGIC)
            + encode_str(info.path)
            + encode_strs(sorted_paths(info.references))
            + encode_str(info.deriver or "")
            + encode_int(0)
        )
    await sink(encode_int(0))
