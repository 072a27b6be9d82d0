"""offload: distribute Nix builds over the local machine and SSH builders."""

from __future__ import annotations

from offload.errors import (
    BuildFailed,
    ConfigError,
    FleetError,
    OffloadError,
    ProtocolError,
    RemoteError,
    SchedulerError,
    SshError,
    StoreError,
    TransportError,
)

__version__ = "0.1.0"

__all__ = [
    "BuildFailed",
    "ConfigError",
    "FleetError",
    "OffloadError",
    "ProtocolError",
    "RemoteError",
    "SchedulerError",
    "SshError",
    "StoreError",
    "TransportError",
    "__version__",
]
