"""What a copy between two stores moves: the closure of some paths in the source that the
destination lacks, dependencies first (``to_copy``), and the copy of it (``send_closure``),
which a builder's store may send in two lanes and a builder's closure must pass a vet, less
what another copy is sending the same store meanwhile (a claim, ``in_flight``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager

from offload.errors import ProtocolError
from offload.protocol.lanes import Lane, copy_in_lanes, worth_lanes
from offload.protocol.serve import PathInfo
from offload.protocol.store import StoreClient, copy_paths, topo_sort_infos

__all__ = ["Claim", "send_closure", "to_copy"]

# What a copy holds of the paths it would send, for as long as it sends them (``in_flight``).
Claim = Callable[[Sequence[PathInfo]], AbstractAsyncContextManager[Sequence[PathInfo]]]


async def send_closure(
    src: StoreClient,
    dst: StoreClient,
    paths: Sequence[str],
    *,
    substitute: bool = False,
    lane: Callable[[], AbstractAsyncContextManager[Lane | None]] | None = None,
    sending: list[str] | None = None,
    vet: Callable[[Sequence[PathInfo]], Awaitable[Sequence[PathInfo]]] | None = None,
    claim: Claim | None = None,
) -> int:
    """Make ``paths`` and their closure valid in ``dst``, copying what it lacks from ``src``.

    With ``substitute``, ``dst`` first fetches what it can from its own substituters
    (Nix's builders-use-substitutes), and only the rest is sent. ``lane`` opens a second
    (source, destination) pair over connections of their own, taken when the large paths are
    worth a login (``offload.protocol.lanes``); None from it: one connection after all.
    ``sending`` is told the paths copied (dependencies first) before the first byte goes.
    ``vet`` sees them first and says which to copy from ``src`` (it may send some from
    elsewhere), or refuses them (raises): then nothing is copied. ``src`` is then a builder,
    which must hold all it is asked for (``to_copy``'s ``whole``). ``claim`` holds what is to
    be copied for the copy, less what another copy is sending ``dst`` (``in_flight``).
    """
    infos = await to_copy(src, dst, paths, substitute=substitute, whole=vet is not None)
    if vet is not None:
        infos = list(await vet(infos))
    if not infos:
        return 0
    async with contextlib.nullcontext(infos) if claim is None else claim(infos) as mine:
        if not mine:
            return 0
        if sending is not None:
            sending.extend(info.path for info in mine)
        if lane is not None and worth_lanes(mine):
            async with lane() as second:
                if second is not None:
                    return await copy_in_lanes([(src, dst), second], mine)
        return await copy_paths(src, dst, mine)


async def to_copy(
    src: StoreClient,
    dst: StoreClient,
    paths: Sequence[str],
    *,
    substitute: bool = False,
    whole: bool = False,
) -> list[PathInfo]:
    """What ``send_closure`` copies: the paths of the closure of ``paths`` in ``src`` that
    ``dst`` lacks, dependencies first. With ``whole`` (``src`` a builder), a path it was
    asked for and does not hold, or one a path it sends refers to that is neither sent nor
    in ``dst``, is ``src``'s ``ProtocolError`` (``_held_whole``)."""
    if not paths:
        return []
    # Only what dst lacks is looked up in src: the rest may be valid in dst alone.
    wanted = await _missing(dst, paths)
    if not wanted:
        return []
    closure = await src.query_closure(wanted)
    if substitute:
        missing = await _missing(dst, closure, substitute=True)
    else:
        # dst was just asked about ``wanted``: only the closure's other paths are asked about
        # (a leaf's output, most of what a run fetches home, costs one round trip less). One
        # made valid in dst meanwhile is skipped by its import, as is any made valid between
        # the questions and the copy.
        others = closure - wanted
        missing = (closure & wanted) | (await _missing(dst, others) if others else set())
    infos = await src.query_path_infos(missing) if missing else {}
    if whole:
        await _held_whole(src, dst, wanted=wanted, closure=closure, missing=missing, infos=infos)
    return topo_sort_infos(infos)


async def _held_whole(
    src: StoreClient,
    dst: StoreClient,
    *,
    wanted: set[str],
    closure: set[str],
    missing: set[str],
    infos: Mapping[str, PathInfo],
) -> None:
    """A store leaves out what it does not hold: a builder's output gone (collected since
    it was built), or a builder that says more than it has. Unchecked, the copy "succeeded"
    with the output not here, or this host's import refused a path whose reference never
    came, and the builder's fault was this host's store's."""
    absent = (wanted - closure) | (missing - set(infos))
    referred = {r for info in infos.values() for r in info.references} - closure
    if referred and not absent:  # outside the closure it gave: in dst already, or nowhere
        absent = referred - await dst.query_valid_paths(sorted(referred))
    if absent:
        first, *more = sorted(absent)
        error = ProtocolError(
            f"{src.name}: does not hold '{first}', which it was asked for or said it holds"
            + (f" (and {len(more)} more)" if more else "")
        )
        error.peer = src.name
        raise error


async def _missing(
    store: StoreClient, paths: Sequence[str] | set[str], *, substitute: bool = False
) -> set[str]:
    return set(paths) - await store.query_valid_paths(paths, substitute=substitute)
