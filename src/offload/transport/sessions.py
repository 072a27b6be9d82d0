"""One-off serve sessions: a single ``StoreClient`` to the local store or one builder.

The local store is reached through the same protocol as the builders (a local
``nix-store --serve --write``, as Hydra does for localhost). That gives one code path for moving
paths in either direction, and it makes local registration atomic per path: Nix adds a path
only after its whole NAR arrived and its hash matched, so an interrupted copy leaves nothing
partial behind.

These are thin wrappers over a one-session ``Link`` (``offload.transport.links``): code that
runs many builds on a machine should keep a ``MachineLink`` open instead and borrow sessions.
``open_lane`` is one of them on purpose: a second ssh connection to a builder, its own master
and so its own compression (``offload.protocol.lanes``), for one large copy.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING

from offload.protocol.serve import StoreClient
from offload.transport.links import LocalLink, LogSink, MachineLink
from offload.transport.ssh import SshTarget

if TYPE_CHECKING:
    from offload.config.machines import Machine

__all__ = ["LogSink", "open_lane", "open_local_store", "open_ssh_store"]


@contextlib.asynccontextmanager
async def open_local_store(
    on_log: LogSink | None = None, env: Mapping[str, str] | None = None
) -> AsyncIterator[StoreClient]:
    """A session on the local store; ``env`` for its nix-store (a run's --options)."""
    async with LocalLink(max_sessions=1, env=env) as link, link.session(on_log) as client:
        yield client


@contextlib.asynccontextmanager
async def open_ssh_store(
    target: SshTarget,
    *,
    name: str,
    params: Mapping[str, str] | None = None,
    on_log: LogSink | None = None,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[StoreClient]:
    """A session on ``target``; raises ``SshError`` naming ``name`` when it cannot connect."""
    link = MachineLink(target, name=name, params=params, max_sessions=1, env=env)
    async with link, link.session(on_log) as client:
        yield client


@contextlib.asynccontextmanager
async def open_lane(
    machine: Machine,
    env: Mapping[str, str] | None = None,
    local_env: Mapping[str, str] | None = None,
) -> AsyncIterator[tuple[StoreClient, StoreClient]]:
    """A second lane from the local store to ``machine``: a local session (``local_env``, as
    the run's own local sessions have it), and a session on the builder over an ssh connection
    of its own (not the run's master)."""
    link = MachineLink.from_machine(machine, env=env, max_sessions=1)
    async with open_local_store(env=local_env) as src, link, link.session() as dst:
        yield src, dst
