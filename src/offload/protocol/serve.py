"""The serve protocol's public face.

The protocol lives in sibling modules, each with its own model: ``wire`` (integers and strings),
``records`` (op codes, path infos, build options and results), ``drv_wire`` (derivations as
BuildDerivation sends them), ``stderr`` (the remote's log lines and errors), ``connection``
(running one request at a time) and ``client`` (one ``ServeClient`` per connection). Their
public names are re-exported here.

``copy_paths`` and ``topo_sort_infos`` (copying between two stores whichever protocol each
speaks) live in ``store`` and are re-exported here for the callers that only know this face.
"""

from __future__ import annotations

from offload.protocol.client import (
    CLIENT_HELLO,
    IMPORT_LIMIT,
    SERVER_HELLO,
    NarProducer,
    ServeClient,
    Sink,
)
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
)
from offload.protocol.stderr import strip_ansi
from offload.protocol.store import StoreClient, copy_paths, topo_sort_infos
from offload.protocol.wire import ByteWriter

__all__ = [
    "CLIENT_HELLO",
    "CLIENT_VERSION",
    "EXPORT_MAGIC",
    "IMPORT_LIMIT",
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
    "StoreClient",
    "copy_paths",
    "encode_basic_derivation",
    "strip_ansi",
    "topo_sort_infos",
]
