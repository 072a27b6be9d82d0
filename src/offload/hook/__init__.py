"""``offload-hook``: offload's decisions inside Nix's own builds (Nix's ``build-hook``).

Set ``build-hook = /path/to/offload-hook`` (``offload hook install --print`` prints the line for
this installation) and every build Nix runs, ``nix-build``, ``nix build``, ``nixos-rebuild`` and
the nix-daemon's, asks offload where each derivation should go. The protocol is in
``offload.hook.wire``, the decision in ``offload.hook.decide``, the accepted build in
``offload.hook.remote`` and ``offload.hook.home``, and the process's life in
``offload.hook.run``.

The hook never leaves Nix without an answer: a problem with the configuration is said once and
every request declined (Nix builds locally, as it would without a hook); a problem with one
builder backs it off and the request is decided again without it. SIGTERM (newer Nix sends it
500 ms before SIGKILL) ends the process at once; its guard stops the remote build.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from types import FrameType

from offload.errors import OffloadError
from offload.hook.context import HookContext, load_context
from offload.hook.run import answer
from offload.hook.wire import Reply, read_request, read_settings, verbosity, write_reply
from offload.paths import hook_state_dir

__all__ = ["main"]


def _terminate(signum: int, _frame: FrameType | None) -> None:
    # Slot locks go with the process; the guard (if a build was under way) cleans up the rest.
    os._exit(128 + signum)


async def _stdin() -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=1 << 20)
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    return reader


async def _serve(level: int) -> int:
    reader = await _stdin()
    preamble = await read_settings(reader)
    context: HookContext | None = None
    problem: OffloadError | None = None
    try:
        state = hook_state_dir()
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        context = load_context(preamble, state, level)
    except OffloadError as exc:
        problem = exc
    if context is not None:
        for note in context.notes:
            context.say_once(note)
    while (request := await read_request(reader)) is not None:
        if context is None:
            assert problem is not None
            _error(problem, "building locally")
            write_reply(Reply.DECLINE_PERMANENTLY)
            continue
        try:
            code = await answer(context, reader, request)
        except OffloadError as exc:
            _error(exc, f"{request.drv_path} is left to Nix")
            write_reply(Reply.DECLINE)
            continue
        if code is not None:
            return code
    return 0


def _error(exc: OffloadError, what: str) -> None:
    hint = f" (hint: {exc.hint})" if exc.hint else ""
    sys.stderr.write(f"offload-hook: error: {exc.message}{hint}; {what}\n")
    sys.stderr.flush()


def main() -> int:
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    level = verbosity(sys.argv)
    try:
        return asyncio.run(_serve(level))
    except OffloadError as exc:
        _error(exc, "stopping")
        return 1
    except Exception as exc:  # noqa: BLE001 - Nix shows our stderr; a traceback helps no one
        sys.stderr.write(f"offload-hook: internal error: {type(exc).__name__}: {exc}\n")
        return 1
