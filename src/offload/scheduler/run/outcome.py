"""How one build copy ended: an ``Outcome``, data for the executor, not an exception.

A derivation that fails to build (with Nix's status for it, so a timeout can be told apart), a
machine that drops the connection or whose disk filled up ("lost"), a copy whose inputs' holder
went away ("returned", no fault of its own machine), and one the run stopped ("cancelled").
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import Literal, TypeGuard

from offload.errors import OffloadError
from offload.names import LOCAL
from offload.protocol.serve import BuildStatus

__all__ = ["Outcome", "ended_on_its_own", "local_store_failed", "with_error"]


@dataclass(frozen=True)
class Outcome:
    """How one build copy ended. "returned": its inputs' holder ``source`` went away (or they
    were lost before it got them), which is no fault of its own machine."""

    kind: Literal["built", "failed", "lost", "returned", "cancelled"]
    error: str | None
    started: float
    bytes_sent: int = 0
    bytes_received: int = 0
    build_seconds: float | None = None
    home: bool = False  # the outputs are in the local store too
    source: str | None = None
    status: BuildStatus | None = None  # Nix's answer to a build that failed
    # Lost, its builder's Nix said why before the session ended (a ``RemoteError``): no
    # connection that dropped, which a reconnect could mend (``reconnects``).
    nix_said: bool = False


def local_store_failed(error: BaseException) -> TypeGuard[OffloadError]:
    """Whether a copy failed on the local store's side: its serve session's errors, and a
    session of it that could not start (a nix-daemon restarted by a nixos-rebuild meanwhile,
    a process limit), name it as their peer. Never a builder's fault."""
    return isinstance(error, OffloadError) and getattr(error, "peer", None) == LOCAL


def ended_on_its_own(task: asyncio.Task[Outcome]) -> bool:
    """Whether ``task`` is a copy that ended built or failed (not lost, given back or stopped)."""
    return (
        task.done()
        and not task.cancelled()
        and task.exception() is None
        and task.result().kind in {"built", "failed"}
    )


def with_error(outcome: Outcome, error: OffloadError) -> Outcome:
    return dataclasses.replace(outcome, error=error.message)
