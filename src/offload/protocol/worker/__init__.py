"""Nix's worker (daemon) protocol, as ``ssh-ng://`` stores and ``nix-daemon --stdio`` speak it.

``records`` holds op codes, versions and the records' wire forms, ``frames`` the stderr frames
that precede every reply, ``client`` the ``WorkerClient`` (one per connection, a stand-in for
``offload.protocol.client.ServeClient``). docs/worker-protocol.md describes the protocol.
"""

from offload.protocol.worker.client import WorkerClient
from offload.protocol.worker.frames import (
    ActivityStart,
    ActivityStop,
    BuildEvents,
    Event,
    LogMessage,
    Result,
)
from offload.protocol.worker.records import (
    CLIENT_VERSION,
    ActivityType,
    DaemonOptions,
    ResultType,
    Verbosity,
)

__all__ = [
    "CLIENT_VERSION",
    "ActivityStart",
    "ActivityStop",
    "ActivityType",
    "BuildEvents",
    "DaemonOptions",
    "Event",
    "LogMessage",
    "Result",
    "ResultType",
    "Verbosity",
    "WorkerClient",
]
