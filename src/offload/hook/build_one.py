"""One accepted build on its builder (``build_on``): its outcome, kept in history as
``offload build`` keeps its copies (``record_build``). A builder that goes away under it is
backed off and, in the coordinator, the build is ``Lost``: ``offload.hook.run`` then builds it
where a slot frees."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

from offload.booleans import nix_bool
from offload.errors import OffloadError, ProtocolError, RemoteError, TransportError
from offload.history.records import HOOK_ID_PREFIX, BuildRecord, building_span
from offload.hook.context import HookContext
from offload.hook.remote import CachesHeard, Outcome, Progress, build_remote, error_message
from offload.hook.wire import Accepted, TryRequest
from offload.names import LOCAL
from offload.protocol.serve import BuildOptions, StoreClient
from offload.store.drv import read_derivation

__all__ = ["Lost", "build_on", "record_build"]

# Why a build stopped midway is kept so: Nix gave it up (its nix-build interrupted, or another
# build failed without --keep-going), or the coordinator was stopped (SIGTERM).
_GIVEN_UP = (
    "stopped before it ended: Nix gave the build up (an interrupt, or another build failing),"
    " or offload-hook's coordinator was stopped"
)


class Lost(Exception):
    """The builder went away mid-build (already backed off): build it somewhere else, as
    ``accepted`` (set by whoever accepted it), or there again if ``reconnect`` (the builder
    being reconnected, ``offload.hook.reconnects``) ends answered."""

    accepted: Accepted | None = None
    reconnect: asyncio.Task[bool] | None = None


async def build_on(
    context: HookContext,
    remote: StoreClient,
    request: TryRequest,
    accepted: Accepted,
    name: str,
    *,
    waited_since: float,
) -> Outcome | None:
    """The build's outcome; None if it could not be built here (said to the user), ``Lost``
    if the builder went away. One stopped (Nix gone: Ctrl-C; the coordinator stopped) is kept
    in history as cancelled, and what it left half-written there (inputs being sent, outputs
    being built) is deleted; one whose builder went away is kept as lost, as ``offload build``
    keeps its stopped copies. Its time from ``waited_since`` (accepted, or lost elsewhere) to
    its session there is its wait for a slot, as an ``offload build`` copy's is."""
    started = waited_since
    machine = context.machine(name)
    substitute = context.pool.builders_use_substitutes or (
        nix_bool(machine.params.get("builders-use-substitutes"))
    )
    progress = Progress()  # how far it got, for a stop midway (``build_remote``)
    progress.begin("waiting", waited_since)
    try:
        async with context.keep.local(context.env) as local:
            return await build_remote(
                context.io,
                request,
                accepted,
                local=local,
                remote=remote,
                machine=name,
                options=BuildOptions.from_settings(context.settings.get),
                substitute=substitute,
                copying=CachesHeard(context.say_to_client, name) if substitute else None,
                progress=progress,
            )
    except asyncio.CancelledError:
        now = time.time()
        stopped = Outcome(0, started, now, phases=progress.phases(now), error=_GIVEN_UP)
        record_build(context, request, name, stopped, status="cancelled")
        if progress.partial:
            await context.keep.links.clear_partial(remote, progress.partial)
        raise
    except (OffloadError, OSError) as exc:
        now = time.time()
        _failed(context, request, name, exc, Outcome(1, started, now, phases=progress.phases(now)))
        return None


def _failed(
    context: HookContext,
    request: TryRequest,
    name: str,
    exc: OffloadError | OSError,
    ended: Outcome,
) -> None:
    """A build that failed for ``exc``, kept as lost (its builder went away: ``Lost`` raised,
    where a coordinator can build it elsewhere) or failed, and said to the user."""
    message = exc.message if isinstance(exc, OffloadError) else str(exc)
    if isinstance(exc, TransportError | ProtocolError) and exc.peer != LOCAL:
        context.machine_failed(name, message)
        record_build(context, request, name, ended, status="lost", error=message)
        if context.keep.dispatch is not None:
            lost = Lost(message)
            # Not where its Nix said why (a RemoteError): no connection that dropped.
            if context.keep.reconnects is not None and not isinstance(exc, RemoteError):
                lost.reconnect = context.keep.reconnects.start(context.machine(name), context.env)
            raise lost from exc
    else:  # this host's side (its store, the .drv): the build failed, no builder did
        record_build(context, request, name, ended, status="failed", error=message)
    hint = f" ({exc.hint})" if isinstance(exc, OffloadError) and exc.hint else ""
    error_message(
        context.io, f"offload-hook: building '{request.drv_path}' on '{name}': {message}{hint}"
    )


def record_build(
    context: HookContext,
    request: TryRequest,
    name: str,
    outcome: Outcome,
    *,
    status: str | None = None,
    error: str | None = None,
) -> None:
    """Keep the build in history: ``status``, else built or failed by its exit code; a lost
    one with why (``error``: its builder's failure), a failed one with the builder's reason
    (``outcome``'s), as ``offload build`` keeps its own."""
    # Its time is its building phase's, as an offload build copy's (``history.recorder``): a
    # wait for a slot, the inputs' upload and the outputs' fetch teach no estimate.
    started, finished = building_span(outcome.phases) or (outcome.started, outcome.finished)
    record = BuildRecord(
        run_id=f"{HOOK_ID_PREFIX}{uuid.uuid4().hex[:12]}",
        drv_path=request.drv_path,
        pname=request.pname,
        machine=name,
        started=started,
        finished=finished,
        status=status or ("built" if outcome.exit_code == 0 else "failed"),
        bytes_sent=outcome.sent,
        bytes_received=outcome.received,
        name=request.name,
        phases=outcome.phases,
        error=error if error is not None else outcome.error,
    )
    inputs: tuple[str, ...] = ()  # what it was built on gives later hooks their tails
    with contextlib.suppress(OffloadError):
        inputs = tuple(read_derivation(request.drv_path).input_drvs)
    context.keep.record(record, inputs)
