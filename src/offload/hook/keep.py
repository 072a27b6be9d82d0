"""What outlives one hook: sessions to the builders and to the local store, and the history.

The coordinator keeps one ``Keep`` for every hook it serves, with the dispatch where accepted
derivations wait for a builder slot (``offload.hook.dispatch``); a hook served in its own
process keeps one for itself, without a dispatch (nor builders known full:
``offload.hook.full``). Each thing in it costs something to open that a derivation should not
pay every time: a serve session on a builder (an ssh round trip and a remote ``nix-store``
start, ``offload.hook.links``), a local ``nix-store --serve`` to read inputs from (a process
start), and the history database (a connection and its schema check). The tails history gives
(``history.tails``) are read once and then again every ``TAILS_SECONDS`` in a thread of their
own, the last ones serving meanwhile: a read of 20,000 edges takes about 0.1 s, which in the
coordinator's event loop would stall every hook it serves. Old history is forgotten in that
thread too, when it is due (``offload.history.prune``). Builds are recorded in a thread of
their own, over its own connection, in order; the event loop's connection reads estimates and
waits at most ``LOOP_WAIT`` for another process's lock (an ``offload build`` writing its run,
a ``VACUUM``), and one that could not be opened is not tried again for ``HISTORY_RETRY``:
either way no hook waits on it. Why the history cannot be used is ``history_problem``, which
``serve`` says once per nix-build.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path

from offload.errors import OffloadError, StoreError
from offload.history.db import History
from offload.history.estimates import estimator
from offload.history.nix_logs import NixLogs, default_drvs_dir
from offload.history.records import BuildRecord
from offload.history.tails import name_of, tails
from offload.hook.coordinator_log import note
from offload.hook.dispatch import Dispatch
from offload.hook.full import FullBuilders
from offload.hook.links import BuilderLinks
from offload.hook.loads import HookLoads
from offload.hook.reconnects import HookReconnects
from offload.hook.slack import PathEnds
from offload.hook_queue import QUEUED_FILE, Queued, record_queued
from offload.load import local_boot_id
from offload.protocol.serve import StoreClient
from offload.scheduler.run import DEFAULT_WORK
from offload.thread_pool import Executor
from offload.transport.links import LocalLink

__all__ = ["TAILS_SECONDS", "Keep"]

# Seconds the event loop's history connection waits for another process's lock, and how long
# a history that could not be opened is not tried again (estimates are guessed meanwhile).
LOOP_WAIT = 0.5
HISTORY_RETRY = 30.0
# Local sessions lent at once: each accepted build reads its inputs through one.
_LOCAL_SESSIONS = 8
# How long the tails read from history serve before they are read again (new edges, estimates).
TAILS_SECONDS = 60.0
# How long a listing of Nix's build logs serves (``offload.history.nix_logs``).
NIX_LOGS_AGE = 600.0


class Keep:
    def __init__(self, state: Path, *, queue: bool = False) -> None:
        self.state = state
        # Builders' load, followed only by a coordinator (``offload.hook.loads`` says why).
        self.loads = HookLoads(state, local_boot_id()) if queue else None
        self.links = BuilderLinks(state, self.loads)
        # Accepted derivations waiting for a slot: only a coordinator can keep them (``queue``).
        self.dispatch = Dispatch(on_queue=_recorder(state / QUEUED_FILE)) if queue else None
        # Builders full of other clients' builds, and their probes (``offload.hook.full``).
        self.full = FullBuilders(self.links, self.dispatch.notify) if self.dispatch else None
        # Builders whose connection was lost, reconnected at once (``offload.hook.reconnects``).
        self.reconnects = (
            HookReconnects(self.links, state, self.dispatch.notify) if self.dispatch else None
        )
        # When each nix-build's paths are expected to end (``offload.hook.slack``).
        self.path_ends = PathEnds()
        self._local: LocalLink | None = None
        self._history: History | None = None
        # Nix's own build logs, for names history does not know (listed on first use, and
        # again after NIX_LOGS_AGE for what Nix built here itself since).
        self.nix_logs = NixLogs(default_drvs_dir(), max_age=NIX_LOGS_AGE)
        self._tails: Mapping[str, float] | None = None
        self._tails_read = 0.0  # when the last read began (monotonic)
        self._tails_reading: asyncio.Task[None] | None = None
        # Builds are recorded in a thread of their own, with its own connection: a history
        # another process holds locked (offload build's run, a VACUUM) stalls no hook.
        self._writer = Executor(max_workers=1, thread_name_prefix="offload-history")
        self._writer_history: History | None = None  # the writer thread's own
        # Why the history cannot be used (damaged, locked, unwritable), said to each client.
        self.history_problem: str | None = None
        self._history_failed = -math.inf  # when opening it last failed (monotonic)
        self._closed = False

    def tails(self, speeds: Mapping[str, float]) -> Mapping[str, float]:
        """Each name's tail (``history.tails``) from the edges history holds, with its work on
        ``speeds`` (a guess where history has none); read at once the first time, then again
        in a thread once ``TAILS_SECONDS`` have passed (module docstring)."""
        now = time.monotonic()
        if self._tails is None:
            self._tails_read = now
            self._tails = _read_tails(self.history, speeds) or {}
        elif now - self._tails_read > TAILS_SECONDS and self._tails_reading is None:
            loop = asyncio.get_running_loop()
            self._tails_read = now
            self._tails_reading = loop.create_task(self._read_tails_apart(dict(speeds)))
        return self._tails

    @property
    def tails_reading(self) -> asyncio.Task[None] | None:
        """The read of the tails under way in a thread, if any."""
        return self._tails_reading

    async def _read_tails_apart(self, speeds: Mapping[str, float]) -> None:
        """Read the tails in a thread, and forget old history there if it is due; the last
        tails stay when this read fails."""

        path = self.state / "history.sqlite"

        def read() -> Mapping[str, float] | None:
            # A connection of the thread's own: sqlite's stay in the thread that opened them.
            with contextlib.ExitStack() as opened:
                return _read_tails(lambda: opened.enter_context(History(path)), speeds)

        try:
            found = await asyncio.to_thread(read)
            if found is not None:
                self._tails = found
            await asyncio.to_thread(_prune, path)  # off the event loop, as the read
        except Exception as exc:  # noqa: BLE001 - no one awaits this task: said, not raised
            note(f"tails not read: {type(exc).__name__}: {exc}")
        finally:
            self._tails_reading = None

    def history(self) -> History:
        """The state directory's history database, opened on first use (``StoreError``, and
        ``history_problem`` says it)."""
        if self._history is None:
            if time.monotonic() - self._history_failed < HISTORY_RETRY:
                raise StoreError(self.history_problem or "history not kept")
            try:
                self._history = History(self.state / "history.sqlite", wait=LOOP_WAIT)
            except OffloadError as exc:
                self._history_failed = time.monotonic()
                self.history_problem = _problem(exc)
                raise
        return self._history

    def record(self, build: BuildRecord, inputs: tuple[str, ...]) -> None:
        """Record ``build`` and what it was built on, in the writer thread (``__init__``); a
        failure is said in the coordinator's log and to the next clients."""
        if not self._closed:  # a build that ended as the coordinator stopped: not kept
            self._writer.submit(self._write, build, inputs)

    def _write(self, build: BuildRecord, inputs: tuple[str, ...]) -> None:
        try:
            if self._writer_history is None:
                self._writer_history = History(self.state / "history.sqlite")
            self._writer_history.record([build], deps={build.drv_path: inputs})
        except OffloadError as exc:
            self.history_problem = _problem(exc)
            note(f"build not recorded: {exc.message}")
        except Exception as exc:  # noqa: BLE001 - no one reads this future: said, not raised
            note(f"build not recorded: {exc!r}")
        else:
            self.history_problem = None

    def _close_writer(self) -> None:
        """In the writer thread, after every record before it."""
        if self._writer_history is not None:
            self._writer_history.close()

    @contextlib.asynccontextmanager
    async def local(self, env: Mapping[str, str]) -> AsyncIterator[StoreClient]:
        """A session on the local store (the first hook's environment opens it)."""
        if self._local is None:
            self._local = LocalLink(max_sessions=_LOCAL_SESSIONS, env=env)
        async with self._local.session() as client:
            yield client

    def took(self, machine: str) -> None:
        """One of our builds took a slot of ``machine`` on this host: its load is partly ours."""
        if self.loads is not None:
            self.loads.started(machine)

    def released(self, machine: str) -> None:
        """One of our builds gave its slot of ``machine`` back: waiting derivations may take it."""
        if self.loads is not None:
            self.loads.ended(machine)
        if self.dispatch is not None:
            self.dispatch.notify()

    async def aclose(self) -> None:
        self._closed = True
        if self._tails_reading is not None:
            self._tails_reading.cancel()  # its thread ends on its own, closing its connection
        try:
            if self.dispatch is not None:
                await self.dispatch.aclose()
            if self.full is not None:
                await self.full.aclose()
            if self.reconnects is not None:
                await self.reconnects.aclose()
            await self.links.aclose()
            if self._local is not None:
                await self._local.aclose()
        finally:
            if self.loads is not None:
                self.loads.forget()
            if self._history is not None:
                self._history.close()
            self._writer.submit(self._close_writer)
            # The last records are written before the process ends (its own thread: a
            # locked history keeps no event loop waiting).
            await asyncio.to_thread(self._writer.shutdown)


# Seconds a pass of forgetting old history may take in the coordinator's thread: each of its
# transactions is short (``offload.history.prune``), so hooks recording builds hardly wait.
PRUNE_BUDGET = 5.0


def _recorder(path: Path) -> Callable[[Sequence[Queued]], bool]:
    """Writes what waits in the dispatch to ``path`` for ``offload status``: whether it was
    kept. A write that fails (a full disk) is noted in the coordinator's log, the first of a
    run of them only (the dispatch tries again), and the builds go on."""
    failing = False

    def record(waiting: Sequence[Queued]) -> bool:
        nonlocal failing
        try:
            record_queued(path, waiting)
        except OSError as exc:
            if not failing:
                note(f"cannot write {path}: {exc.strerror or exc}")
            failing = True
            return False
        failing = False
        return True

    return record


def _prune(path: Path) -> None:
    """Forget old history if it is due (``History.prune_if_due``), here where no hook waits
    for it; a failure is said in the coordinator's log."""
    try:
        with History(path) as history:
            history.prune_if_due(time.time(), budget=PRUNE_BUDGET)
    except OffloadError as exc:
        note(f"old history not forgotten: {exc.message}")


def _problem(exc: OffloadError) -> str:
    return f"history not kept: {exc.message}" + (f" ({exc.hint})" if exc.hint else "")


def _read_tails(
    history: Callable[[], History], speeds: Mapping[str, float]
) -> Mapping[str, float] | None:
    """The tails of the edges ``history`` (opened by the call) holds, each name's work its
    estimate on ``speeds``; None when it cannot be opened or read (``StoreError``): a damaged
    history, or one of a newer offload, orders nothing but stops no build."""
    try:
        opened = history()
        edges = opened.recent_deps()
        known = estimator(opened, speeds)({n for edge in edges for p in edge if (n := name_of(p))})
    except OffloadError:
        return None
    return tails(edges, lambda name: known.get(name, DEFAULT_WORK))
