"""One accepted derivation, built on a builder as build-remote builds it, and brought home.

The inputs Nix names go to the builder as one export stream, only what it lacks
(``send_closure``, the same as ``offload build`` uses; with builders-use-substitutes it first
fetches from its own caches, and a cache its Nix leaves out then is said to the user as
``offload build`` says it: ``CachesHeard``; one its Nix stops on is the builder failed). The
build runs by ``BuildDerivation`` (the serve protocol's, or the daemon's for ssh-ng://, whose
build phases go on to Nix as its own would) with Nix's ``timeout``, ``max-silent-time`` and
``max-build-log-size``; its log lines go to fd 4, where Nix keeps them (``nix log``, ``-L``).
The wanted outputs come home through ``offload.hook.home``, and nothing else: Nix made the
inputs valid here first, so any other path of their closure missing here is the builder's
word, refused (the build fails, naming it). Each step is announced to Nix as a structured
activity (``@nix`` lines), so its progress bar and ``--log-format`` see the build.

A build failure is reported the way Nix reads a hook's: the message as a structured error and
the exit code 100 (101 when the build timed out), which Nix 2.8 turns into the derivation's
failure (newer Nix takes any non-zero code as a failure).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from offload.cache_words import CacheLines, cache_fault
from offload.errors import OffloadError, TransportError
from offload.history.records import PhaseRecord
from offload.hook.home import import_outputs
from offload.hook.wire import Accepted, HookIO, TryRequest, write_nix_json
from offload.platform_refusal import claimed_not_had
from offload.protocol.serve import (
    BuildOptions,
    BuildResult,
    BuildStatus,
    StoreClient,
    topo_sort_infos,
)
from offload.protocol.stderr import strip_ansi
from offload.protocol.store import also_heard
from offload.scheduler.run import send_closure
from offload.scheduler.run.disk import disk_full, disk_full_error
from offload.store.drv import Derivation, read_derivation
from offload.store.provenance import refused_paths

__all__ = ["CachesHeard", "Outcome", "build_remote", "error_message", "log_writer"]

# Activity ids must be unique per Nix process; one coordinator builds for many hooks at once.
_ACTIVITY_BLOCKS = itertools.count()
# Nix's activity types and result types (logging.hh).
_ACT_BUILD = 105
_ACT_COPY_PATHS = 103
_RES_SET_PHASE = 104
_TALKATIVE = 4  # Nix's verbosity levels: 3 info (its default), 4 talkative (-v)


@dataclass(frozen=True)
class Outcome:
    exit_code: int  # 0, 100 (build failed), 101 (timed out)
    started: float
    finished: float
    sent: int = 0
    received: int = 0
    # sending, building and fetching, as an `offload build` copy's (history, the hook report)
    phases: tuple[PhaseRecord, ...] = ()
    # A failed build's reason, as the builder's Nix gave it (its last log lines with it), kept
    # in history as an `offload build` failure's is.
    error: str | None = None


def log_writer(io: HookIO) -> Callable[[str], None]:
    """Lines of the build's log to Nix's log pipe (fd 4)."""

    def write(line: str) -> None:
        io.log((line + "\n").encode(errors="replace"))

    return write


@dataclass
class Progress:
    """How far a build on a builder got, for one stopped midway: when each phase began, and
    what a stop may leave half-written there (the inputs being sent, then the outputs being
    built: ``offload.hook.build_one`` deletes them)."""

    partial: list[str] = field(default_factory=list)
    begun: list[tuple[str, float]] = field(default_factory=list)

    def begin(self, phase: str, at: float) -> None:
        self.begun.append((phase, at))

    def phases(self, until: float) -> tuple[PhaseRecord, ...]:
        """The phases begun, each to the next one's start, the last to ``until``."""
        ends = [at for _, at in self.begun[1:]] + [until]
        return tuple(PhaseRecord(p, at, end) for (p, at), end in zip(self.begun, ends, strict=True))


class _Activities:
    def __init__(self, io: HookIO) -> None:
        self._io = io
        self._next = (os.getpid() << 32) + next(_ACTIVITY_BLOCKS) * 1000 + 1

    def start(self, kind: int, text: str, fields: list[object], level: int = 3) -> int:
        act, self._next = self._next, self._next + 1
        message = {"action": "start", "id": act, "level": level, "type": kind, "text": text}
        write_nix_json(self._io, {**message, "fields": fields, "parent": 0})
        return act

    def phase(self, act: int, phase: str) -> None:
        message = {"action": "result", "id": act, "type": _RES_SET_PHASE, "fields": [phase]}
        write_nix_json(self._io, message)

    def stop(self, act: int) -> None:
        write_nix_json(self._io, {"action": "stop", "id": act})


class CachesHeard:
    """Reads the lines ``machine``'s Nix says while the inputs go (they are in the build's log
    too): a binary cache it leaves out (builders-use-substitutes) is a line of ``say``'s,
    which says it once per nix-build (``HookContext.say_to_client``). Its own words are in the
    log, which ``nix build`` shows only on failure; the run goes on without the cache.

    An ``error:`` line naming a cache (an ``ssh://`` one) is held until the builder goes on
    (its next line, or the inputs sent: ``settle``): without fallback its Nix stops with it,
    which ends the session, and then the builder failed with those words (said as that, with
    the fix on the builder: ``HookContext.machine_failed``), and no cache was left out."""

    def __init__(self, say: Callable[[str], None], machine: str) -> None:
        self._say = say
        self._machine = machine
        self._lines = CacheLines()  # its lines read as blocks (an HTTP error's quoted body)
        self._held: tuple[str, str] | None = None  # (the line to say, Nix's words)

    def __call__(self, line: str) -> None:
        self.settle(None, end=False)
        plain = strip_ansi(line).strip()
        own = cache_fault(line) if plain.startswith("error:") else None
        for fault in self._lines.read(line):
            if fault == own:  # an error line's own cache: held until the builder goes on
                self._held = (self._text(fault), plain.removeprefix("error:").strip())
            else:
                self._say(self._text(fault))

    def settle(self, error: str | None, *, end: bool = True) -> None:
        """The builder went on: a held cache is said, unless the sending ended with an
        ``error`` carrying the held line's words (its Nix stopped on that cache); at its
        ``end``, a held block of its lines too."""
        held, self._held = self._held, None
        if held is not None and (error is None or held[1] not in error):
            self._say(held[0])
        if end and (fault := self._lines.end()) is not None:
            self._say(self._text(fault))

    def _text(self, fault: tuple[str, str]) -> str:
        cache, why = fault
        return (
            f"builder '{self._machine}' left out binary cache '{cache}': {why}; the inputs it "
            f"would have given are sent from here instead (check the substituters setting "
            f"on '{self._machine}')"
        )


def error_message(io: HookIO, text: str) -> None:
    """An error Nix shows after the reply (plain lines are dropped then)."""
    write_nix_json(io, {"action": "msg", "level": 0, "msg": text})


async def _send_inputs(
    acts: _Activities,
    accepted: Accepted,
    local: StoreClient,
    remote: StoreClient,
    *,
    name: str,  # the derivation's, as Nix's lines name a build
    machine: str,
    substitute: bool,
    copying: CachesHeard | None,
    sending: list[str],
) -> int:
    """The inputs ``remote`` lacks, sent (or, with ``substitute``, fetched by it from its own
    caches first), told to ``sending`` before the first byte goes; the bytes sent."""
    copy = acts.start(_ACT_COPY_PATHS, f"copying inputs of '{name}' to '{machine}'", [])
    with also_heard(remote, copying) if copying is not None else contextlib.nullcontext():
        try:
            sent = await send_closure(
                local, remote, accepted.inputs, substitute=substitute, sending=sending
            )
        except (OffloadError, OSError) as exc:
            if copying is not None:
                copying.settle(str(exc))
            raise
    if copying is not None:
        copying.settle(None)
    acts.stop(copy)
    return sent


async def build_remote(
    io: HookIO,
    request: TryRequest,
    accepted: Accepted,
    *,
    local: StoreClient,
    remote: StoreClient,
    machine: str,
    options: BuildOptions,
    substitute: bool = False,
    copying: CachesHeard | None = None,  # the builder's lines while inputs go
    progress: Progress | None = None,
) -> Outcome:
    """The derivation built on ``machine``: inputs sent, built, outputs fetched, told to
    ``progress`` as it goes."""
    drv = read_derivation(request.drv_path)
    acts = _Activities(io)
    progress = Progress() if progress is None else progress
    progress.begin("sending", time.time())
    started = progress.begun[0][1]  # its wait for the builder's slot, if it had one
    sent = await _send_inputs(
        acts, accepted, local, remote, name=request.name, machine=machine,
        substitute=substitute, copying=copying, sending=progress.partial,
    )  # fmt: skip
    building_from = time.time()
    progress.begin("building", building_from)
    progress.partial[:] = sorted(drv.output_paths.values())
    result = await _build(acts, request, drv, accepted, remote, machine=machine, options=options)
    progress.partial.clear()  # built, or failed: Nix's to clear
    built = time.time()
    phases = progress.phases(built)
    if disk_full(result.status, result.error_msg):
        # The builder's fault, not the derivation's: backed off, and in the coordinator the
        # build goes elsewhere, as offload build's (``offload.scheduler.run.disk``).
        full = TransportError(disk_full_error(machine, result.error_msg))
        full.peer = machine
        raise full
    if not result.success:
        said = result.error_msg.removeprefix("error: ")
        claimed = claimed_not_had(said, machine)
        said += f" ({claimed})" if claimed else ""
        # Worded as Nix's own hook words it, "error:" and all (Nix prints a message as sent).
        error_message(io, f"error: build of '{request.drv_path}' on '{machine}' failed: {said}")
        code = 101 if result.status is BuildStatus.TIMED_OUT else 100
        return Outcome(code, started, built, sent, phases=phases, error=result.error_msg)
    progress.begin("fetching", built)
    received = await _fetch(
        acts, request, drv, accepted, local=local, remote=remote, machine=machine
    )
    finished = time.time()
    return Outcome(0, started, finished, sent, received, progress.phases(finished))


async def _build(
    acts: _Activities,
    request: TryRequest,
    drv: Derivation,
    accepted: Accepted,
    remote: StoreClient,
    *,
    machine: str,
    options: BuildOptions,
) -> BuildResult:
    """The derivation built on ``machine``, its activity and phases shown as Nix shows its own."""
    # Talkative (-v): Nix says "building '...' on '<uri>'" itself at the accept; at its
    # default verbosity this one, the same line with the builder's name, was said twice.
    build = acts.start(
        _ACT_BUILD,
        f"building '{request.drv_path}' on '{machine}'",
        [request.drv_path, machine, 1, 1],
        level=_TALKATIVE,
    )
    acts.phase(build, "building")
    # An ssh-ng:// builder reports its own phases: Nix shows them as it does for its own builds.
    remote.on_phase = lambda _drv, phase: acts.phase(build, phase)
    inputs = accepted.inputs if drv.input_drvs else None
    try:
        result = await remote.build_derivation(
            request.drv_path, drv, input_srcs=inputs, options=options
        )
    finally:
        remote.on_phase = None
    acts.stop(build)
    return result


async def _fetch(
    acts: _Activities,
    request: TryRequest,
    drv: Derivation,
    accepted: Accepted,
    *,
    local: StoreClient,
    remote: StoreClient,
    machine: str,
) -> int:
    """The wanted outputs brought home from ``machine``; the bytes received. Their closure
    holds nothing else missing here (``offload.hook.home``): anything else is refused."""
    fetch = acts.start(_ACT_COPY_PATHS, f"copying outputs of '{request.name}' from '{machine}'", [])
    outputs = [drv.outputs[name].path for name in accepted.wanted if name in drv.outputs]
    # Nix locked every output of the derivation before it asked us (locking one again would
    # wait for ever for our own parent).
    held = {output.path for output in drv.outputs.values()}
    closure = await remote.query_closure(outputs)
    missing = closure - await local.query_valid_paths(closure)
    if strays := sorted(missing - held):
        what = f"the outputs of '{request.drv_path}'"
        raise refused_paths(machine, what, strays, "which is no output of it")
    infos = await remote.query_path_infos(missing)
    received = await import_outputs(remote, topo_sort_infos(infos), held=held)
    acts.stop(fetch)
    return received
