"""Outputs a run does not build: copied from a builder that already holds them, or
substituted by the local store while the graph was read. Each is told as a finished job, so
the run's report and its renderers count them like any other."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from offload.build.graph import DrvGraph
from offload.names import LOCAL
from offload.protocol.serve import StoreClient
from offload.scheduler.run import send_closure
from offload.ui.events import Event, JobFinished

__all__ = ["fetch_existing", "report_substituted"]


async def fetch_existing(
    graph: DrvGraph,
    clients: Mapping[str, StoreClient],
    local: StoreClient,
    emit: Callable[[Event], None],
) -> list[JobFinished]:
    """Copy outputs that a builder already holds instead of building them again."""
    done: list[JobFinished] = []
    for drv_path, machine in sorted(graph.fetch.items()):
        started = time.time()
        outputs = [graph.output_path(drv_path, o) for o in sorted(graph.wanted[drv_path])]
        received = await send_closure(clients[machine], local, outputs)
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
