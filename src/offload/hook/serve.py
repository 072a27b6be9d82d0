"""One hook served from start to end: the settings preamble, then ``try`` after ``try``.

``serve`` is the same whether the hook runs in the coordinator (``offload.hook.coordinator``,
the usual way: the hook process hands its pipes over) or in the hook process itself
(``in_process``: when no coordinator can be had). Either way the hook never leaves Nix without
an answer: a problem with the configuration is said once and every request declined (Nix builds
locally, as it would without a hook); a problem with one builder backs it off and the request
is decided again without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

from offload.errors import OffloadError
from offload.hook.context import HookContext, load_context
from offload.hook.keep import Keep
from offload.hook.remote import error_message
from offload.hook.run import answer
from offload.hook.wire import (
    CountingReader,
    HookIO,
    Reply,
    Turn,
    UnusableRequest,
    read_request,
    read_settings,
    verbosity,
    write_nix_json,
    write_reply,
)
from offload.protocol.wire import ByteReader
from offload.state_location import HOOK_STATE_NOTE, usable_hook_state
from offload.thread_pool import QuietRunner

__all__ = ["Hook", "error_line", "in_process", "serve"]


class Hook:
    """What one hook process brings: its pipes to Nix, arguments, environment and parent."""

    def __init__(
        self, reader: ByteReader, io: HookIO, argv: list[str], env: Mapping[str, str], parent: int
    ) -> None:
        self.reader = reader
        self.io = io
        self.level = verbosity(argv)
        self.env = dict(env)
        self.parent = parent

    def error(self, exc: OffloadError, what: str) -> None:
        """``exc`` said before the reply, as a structured line: a plain one goes to a
        nix-daemon's own log, not to its client (``HookContext.say``)."""
        line = error_line(exc, what).decode().rstrip("\n")
        write_nix_json(self.io, {"action": "msg", "level": 0, "msg": line})


def error_line(exc: OffloadError, what: str) -> bytes:
    hint = f" (hint: {exc.hint})" if exc.hint else ""
    return f"offload-hook: error: {exc.message}{hint}; {what}\n".encode(errors="replace")


def _context(hook: Hook, preamble: Mapping[str, str], keep: Keep) -> HookContext:
    return load_context(
        preamble,
        state=keep.state,  # made by the coordinator, or by ``_usable_state``
        verbosity=hook.level,
        env=hook.env,
        io=hook.io,
        parent=hook.parent,
        keep=keep,
    )


async def serve(hook: Hook, keep: Keep, *, guarded: bool) -> int:
    """Answer ``hook``'s requests; its exit code (that of the build it accepted, else 0)."""
    counted = CountingReader(hook.reader)
    preamble = await read_settings(counted)
    hook.io.settings_read(counted.count)
    context: HookContext | None = None
    problem: OffloadError | None = None
    try:
        context = _context(hook, preamble, keep)
    except OffloadError as exc:
        problem = exc
    if context is not None:
        with contextlib.suppress(OffloadError):  # a history that cannot be used is a note
            keep.history()
        elsewhere = hook.env.get(HOOK_STATE_NOTE)
        problems = [p for p in (elsewhere, keep.history_problem) if p]
        for note in [*context.notes, *problems]:
            context.say_to_client(note)
    while True:
        try:
            request = await read_request(hook.reader)
        except UnusableRequest as exc:
            hook.io.turn(Turn.ASKED)
            hook.error(exc, "it is left to Nix")
            write_reply(hook.io, Reply.DECLINE)
            continue
        if request is None:
            break
        hook.io.turn(Turn.ASKED)
        if context is None:
            assert problem is not None
            hook.error(problem, _left_to_nix(preamble))
            write_reply(hook.io, Reply.DECLINE_PERMANENTLY)
            continue
        try:
            code = await answer(context, hook.reader, request, guarded=guarded)
        except Exception as exc:  # noqa: BLE001 - any failure is one line, and Nix goes on
            failure = exc if isinstance(exc, OffloadError) else _internal(exc)
            if hook.io.accepted:  # Nix waits for this build's end: it failed, and says why
                error_message(hook.io, error_line(failure, "the build failed").decode().strip())
                return 1
            # Nix waits for a reply: declined, it builds the derivation itself.
            hook.error(failure, f"{request.drv_path} is left to Nix")
            write_reply(hook.io, Reply.DECLINE)
            continue
        if code is not None:
            return code
    return 0


def _left_to_nix(settings: Mapping[str, str]) -> str:
    """What declining every build for good means: Nix builds them here, unless its max-jobs
    is 0 (-j 0): then it builds nothing and fails them ("unable to start any build")."""
    if settings.get("max-jobs", "").strip() == "0":
        return "Nix builds nothing here (max-jobs 0), so its builds fail"
    return "building locally"


def _internal(exc: Exception) -> OffloadError:
    """An unexpected failure (a full disk under the state directory, say) as a user's error."""
    return OffloadError(f"internal error: {type(exc).__name__}: {exc}")


def _terminate(signum: int, _frame: FrameType | None) -> None:
    # Slot locks go with the process; the guard (if a build was under way) cleans up the rest.
    os._exit(128 + signum)


async def _serve_here() -> int:
    reader = asyncio.StreamReader(limit=1 << 20)
    loop = asyncio.get_running_loop()
    if not sys.stdin.isatty() and _not_pollable(0):
        # A file (or /dev/null) given by hand: epoll refuses those, and they end.
        reader.feed_data(sys.stdin.buffer.read())
        reader.feed_eof()
    else:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    hook = Hook(reader, HookIO.of_fds(), sys.argv, os.environ, os.getppid())
    keep = Keep(_usable_state(hook))
    try:
        return await serve(hook, keep, guarded=True)
    finally:
        await keep.aclose()


def _usable_state(hook: Hook) -> Path:
    """The hook's state directory, or where it is kept instead (``usable_hook_state``), which
    ``serve`` then says."""
    state, note = usable_hook_state(hook.env)
    if note is not None:
        hook.env[HOOK_STATE_NOTE] = note
    return Path(state)


def _not_pollable(fd: int) -> bool:
    mode = os.fstat(fd).st_mode
    return not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode))


def in_process() -> int:
    """Serve the hook in this process (no coordinator): Nix's pipes are our own stdio."""
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    try:
        # Its signals go to this thread, whose loop they wake: none waits for its next event.
        with QuietRunner() as runner:
            return runner.run(_serve_here())
    except OffloadError as exc:
        sys.stderr.buffer.write(error_line(exc, "stopping"))
        return 1
    except Exception as exc:  # noqa: BLE001 - Nix shows our stderr; a traceback helps no one
        sys.stderr.write(f"offload-hook: internal error: {type(exc).__name__}: {exc}\n")
        return 1
