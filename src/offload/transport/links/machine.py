"""A builder reached over ssh as a ``Link``: sessions lent out of one ``SshTransport``
(``ssh_master``), builds holding builder-side slots, and what a failed build left in the
builder's store deleted over the same master.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from offload.booleans import nix_bool
from offload.errors import OffloadError, SshError
from offload.transport.dialect import SERVE, Dialect, dialect_of
from offload.transport.links.pool import Link
from offload.transport.links.ssh_master import SshTransport
from offload.transport.ssh import CONNECT_TIMEOUT, SshTarget, ssh_target
from offload.transport.wrapper import remove_partial_argv, remove_want_argv
from offload.typing_compat import override

if TYPE_CHECKING:
    from offload.config.machines import Machine

__all__ = ["MachineLink", "RemoteRunner", "unmark"]

# Seconds the end of a link may spend removing its want marker from a builder that no longer
# answers: the marker goes stale in seconds, and a run's end must not wait on it.
_UNMARK_TIMEOUT = 1.0


class RemoteRunner(Protocol):
    """What runs a command on a builder over its ssh master (``SshTransport``, the hook's
    ``SharedSshTransport``): exit code, stdout, stderr."""

    async def run(self, remote: list[str]) -> tuple[int, str, str]: ...


async def unmark(link: Link, ssh: RemoteRunner) -> None:
    """This client's want marker removed from ``link``'s builder where a busy answer may have
    left it (``Link.marked``): a run or coordinator that waited there and ended, or built
    elsewhere, left it for other clients' sessions to delete 10 minutes later. Bounded, and
    never an error: it goes stale in seconds."""
    if link.marked:
        with contextlib.suppress(OffloadError, OSError, TimeoutError):
            async with asyncio.timeout(_UNMARK_TIMEOUT):
                await ssh.run(remove_want_argv(link.client_id))


class MachineLink(Link):
    """A builder reached over ssh: one master connection, up to ``max_sessions`` sessions, and
    builds holding one of ``builder_slots`` slot locks on the builder (0: none)."""

    def __init__(
        self,
        target: SshTarget,
        *,
        name: str,
        params: Mapping[str, str] | None = None,
        max_sessions: int = 2,
        env: Mapping[str, str] | None = None,
        substitute: bool = False,
        connect_timeout: int = CONNECT_TIMEOUT,
        dialect: Dialect = SERVE,
        builder_slots: int = 0,
        transport: SshTransport | None = None,
        shared: Path | None = None,
    ) -> None:
        # ``transport``: one made for this builder already, e.g. its master started early;
        # else one of its own, over the persistent master in ``shared`` if given (``persist``).
        self.ssh = transport or SshTransport(
            target,
            name=name,
            params=params,
            env=env,
            connect_timeout=connect_timeout,
            dialect=dialect,
            shared=shared,
        )
        # Builds hold one of ``builder_slots`` on the builder itself (``Link.build_session``).
        super().__init__(
            self.ssh,
            max_sessions=max_sessions,
            substitute=substitute,
            builder_slots=builder_slots,
            slot_start=self.ssh.start,
        )
        self._params = dict(params or {})
        self._serve = dialect is SERVE

    @override
    def _release(self) -> None:
        self.ssh.release()

    @override
    async def aclose(self) -> None:
        """Closed; this client's want marker removed from the builder first (``unmark``)."""
        try:
            await unmark(self, self.ssh)
        finally:
            await super().aclose()

    async def remove_partial(self, paths: Sequence[str]) -> None:
        """Delete what a failed build left of ``paths`` in the builder's store: each path that
        exists there and is not valid (``offload.scheduler.run.disk``)."""
        # An ssh-ng:// builder's remote-program is its nix-daemon: the store program is
        # nix-store there, as on PATH.
        code, _, err = await self.ssh.run(remove_partial_argv(self._params, paths, self._serve))
        if code != 0:
            raise SshError(
                f"cannot delete partial outputs on builder '{self.name}': {err.strip()[-300:]}"
            )

    @classmethod
    def from_machine(
        cls,
        machine: Machine,
        *,
        env: Mapping[str, str] | None = None,
        substitute: bool | None = None,
        max_sessions: int | None = None,
        connect_timeout: int = CONNECT_TIMEOUT,
        transport: SshTransport | None = None,
        shared: Path | None = None,
    ) -> MachineLink:
        """A link sized for ``machine``: its slots plus one session for copying.

        ``substitute`` defaults to the machine's ``builders-use-substitutes`` URI parameter;
        ``transport``, the machine's own, made already (``offload.transport.links.early``);
        ``shared``, where its persistent master is when it has none.
        """
        if substitute is None:
            substitute = nix_bool(machine.params.get("builders-use-substitutes"))
        return cls(
            ssh_target(machine),
            name=machine.name,
            params=machine.params,
            max_sessions=max_sessions if max_sessions is not None else machine.max_jobs + 1,
            env=env,
            substitute=substitute,
            connect_timeout=connect_timeout,
            dialect=dialect_of(machine),
            builder_slots=machine.max_jobs,
            transport=transport,
            shared=shared,
        )
