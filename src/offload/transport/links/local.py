"""The local store behind the same interface as a builder: ``LocalTransport`` starts a local
``nix-store --serve --write`` per session (as Hydra does for localhost), ``LocalLink`` pools them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence

from offload.config.settings import without_hook
from offload.errors import StoreError, TransportError
from offload.names import LOCAL
from offload.process import local_sh, run_async, spawn
from offload.protocol.export import Exporter
from offload.transport.links.base import (
    CONTROL_TIMEOUT,
    KILL_GRACE,
    SessionPipes,
    drain_dead,
    open_serve,
)
from offload.transport.links.pool import Link
from offload.transport.wrapper import (
    kill_script,
    remove_partial_argv,
    serve_command,
    store_program,
)

__all__ = ["LocalLink", "LocalTransport"]


class LocalTransport:
    """``nix-store --serve --write`` on this machine (as Hydra does for localhost)."""

    def __init__(
        self,
        *,
        name: str = LOCAL,
        params: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.name = name
        self.params = params
        self.env = without_hook(env)  # no build hook takes what offload builds here
        self._start_timeout = start_timeout
        self._cores: int | None = None  # as the first session said: later ones are told them

    async def start(self, stack: contextlib.AsyncExitStack) -> SessionPipes:
        argv = local_sh(serve_command(self.params, cores=self._cores), self.env)
        try:
            proc = await stack.enter_async_context(spawn(argv, env=self.env))
        except TransportError as exc:  # this host's program (its sh) could not be started
            exc.peer = self.name
            raise
        stack.push_async_callback(drain_dead, proc)
        assert proc.stdin is not None
        opening = await open_serve(proc, self._start_timeout)
        if opening.failure is not None or opening.pid is None:
            tail = " | ".join([*opening.early[-5:], opening.failure or "no start line"])
            error = TransportError(f"{self.name}: `nix-store --serve` did not start: {tail}")
            error.peer = self.name  # this host's store failed, not a builder
            raise error
        if opening.load is not None:
            self._cores = opening.load.cores
        pipes = opening.pipes(proc)
        pipes.exporter = Exporter(
            tuple(store_program(self.params)),
            self.env,
            self.name,
            can_dump=not (self.params or {}).get("remote-store"),
        )
        return pipes

    async def kill(self, pid: int, born: str | None = None) -> None:
        await asyncio.wait_for(
            run_async(
                local_sh(kill_script(pid, KILL_GRACE, born), self.env),
                env=self.env,
                check=False,
            ),
            CONTROL_TIMEOUT,
        )

    async def close(self) -> None:
        return None


class LocalLink(Link):
    """The local store behind the same interface as a builder."""

    async def remove_partial(self, paths: Sequence[str]) -> None:
        """Delete what a copy cut off mid-stream left of ``paths`` in this host's store (Nix
        restores a NAR straight into its path): each there and not valid, never a valid one
        (``offload.scheduler.run.disk``)."""
        transport = self._local_transport
        argv = local_sh(remove_partial_argv(transport.params, paths), transport.env)
        done = await run_async(argv, env=transport.env, check=False)
        if done.returncode != 0:
            raise StoreError(
                f"cannot delete partial paths here: {done.stderr.strip()[-300:]}",
                hint="`nix-store --delete` them, or leave them to the garbage collector",
            )

    def __init__(
        self,
        *,
        max_sessions: int = 2,
        env: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        substitute: bool = False,
    ) -> None:
        self._local_transport = LocalTransport(params=params, env=env)
        super().__init__(self._local_transport, max_sessions=max_sessions, substitute=substitute)
