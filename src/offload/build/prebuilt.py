"""Outputs a run does not build: copied from a builder that already holds them, or
substituted by the local store while the graph was read. Each is told as a finished job, so
the run's report and its renderers count them like any other.

A builder's outputs come with the closure it says they have, and that closure must be what
their derivation's closure makes (``offload.store.provenance``): a path of the builder's own
choosing is refused before a byte is copied, and the builder is left out of the run as one
down, its outputs built instead."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from offload.build.graph import DrvGraph
from offload.errors import OffloadError, RemoteError, StoreError
from offload.names import LOCAL
from offload.protocol.serve import PathInfo, StoreClient
from offload.scheduler.run import send_closure
from offload.scheduler.run.outcome import local_store_failed
from offload.store.drv import Derivation, read_derivation
from offload.store.provenance import NOT_MADE, Provenance, RefusedPaths, refused_paths
from offload.ui.events import Event, JobFinished

__all__ = ["FetchFailed", "closure_vet", "fetch_existing", "report_substituted"]


class FetchFailed(OffloadError):
    """A builder failed while its outputs were copied home (``machine``): the run reads the
    graph again without it, and builds what it held. ``down``: its connection failed (it is
    left out of the run, as one that did not answer); else its Nix refused the copy in words
    of its own (a path its garbage collector took meanwhile), and it is only not asked again."""

    def __init__(
        self, machine: str, message: str, *, down: bool, partial: Sequence[str] = ()
    ) -> None:
        super().__init__(message)
        self.machine = machine
        self.down = down
        # What the cut copy was sending here, dependencies first: the last begun may be
        # half-written in this host's store (Nix restores a NAR straight into its path).
        self.partial = tuple(partial)


async def fetch_existing(
    graph: DrvGraph,
    clients: Mapping[str, StoreClient],
    local: StoreClient,
    emit: Callable[[Event], None],
    read: Callable[[str], Derivation] = read_derivation,
) -> list[JobFinished]:
    """Copy outputs that a builder already holds instead of building them again (with the
    closure ``read``'s derivation files say they have)."""
    done: list[JobFinished] = []
    provenance = Provenance(graph.drvs, read)
    for drv_path, machine in sorted(graph.fetch.items()):
        started = time.time()
        outputs = [graph.output_path(drv_path, o) for o in sorted(graph.wanted[drv_path])]
        sending: list[str] = []
        try:
            vet = closure_vet(drv_path, machine, provenance)
            received = await send_closure(
                clients[machine], local, outputs, vet=vet, sending=sending
            )
        except OffloadError as exc:
            if local_store_failed(exc):  # this host's store: no builder to leave out
                raise
            # Paths of its own choosing: left out of the run as one down, and said so.
            down = isinstance(exc, RefusedPaths) or not isinstance(exc, RemoteError)
            raise FetchFailed(machine, exc.message, down=down, partial=sending) from exc
        event = JobFinished(
            drv_path=drv_path,
            name=graph.drvs[drv_path].name,
            machine=machine,
            status="fetched",
            started=started,
            finished=time.time(),
            bytes_sent=0,
            bytes_received=received,
            error=None,
            time=time.time(),
        )
        done.append(event)
        emit(event)
    return done


def closure_vet(
    drv_path: str, machine: str, provenance: Provenance
) -> Callable[[Sequence[PathInfo]], Awaitable[Sequence[PathInfo]]]:
    """Refuses a closure of ``drv_path``'s outputs that names what no derivation of the run,
    nor its own closure, makes (``offload.store.provenance``). Its files are read in a
    thread: a system's closure is thousands of them. Failing to read one is this host's
    fault, not the builder's."""

    async def vet(infos: Sequence[PathInfo]) -> Sequence[PathInfo]:
        paths = [info.path for info in infos]
        try:
            strays = await asyncio.to_thread(provenance.unexplained, paths, [drv_path])
        except OSError as exc:
            error = StoreError(f"cannot read a derivation of {drv_path}: {exc}")
            error.peer = LOCAL
            raise error from exc
        except StoreError as exc:
            exc.peer = LOCAL
            raise
        if strays:
            what = f"the outputs of '{drv_path}' it holds"
            raise refused_paths(machine, what, strays, NOT_MADE)
        return infos

    return vet


def report_substituted(graph: DrvGraph, emit: Callable[[Event], None]) -> list[JobFinished]:
    """A finished job on the local machine for each derivation its binary caches provided.

    No bytes are counted: they came from the cache into the store, not through offload.
    """
    done: list[JobFinished] = []
    for drv_path, sub in sorted(graph.substituted.items(), key=lambda item: item[1].started):
        event = JobFinished(
            drv_path=drv_path,
            name=graph.drvs[drv_path].name,
            machine=LOCAL,
            status="substituted",
            started=sub.started,
            finished=sub.finished,
            bytes_sent=0,
            bytes_received=0,
            error=None,
            time=sub.finished,
        )
        done.append(event)
        emit(event)
    return done
