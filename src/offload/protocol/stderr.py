"""What a serve remote prints on stderr: log lines, ANSI escapes, and the error behind an EOF.

The protocol has no in-band errors: when a command fails, the remote prints ``error: ...`` on its
stderr and exits, and the client only sees its stdout end. So the client drains stderr in the
background (``pump_lines``), passes every line on as a log line (builder output arrives there
too), and keeps the last ``error:`` block (``ErrorTail``) to turn "stdout ended" into a
``RemoteError`` carrying the remote's own message.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from offload.ansi import strip_ansi
from offload.errors import RemoteError
from offload.protocol.trust import is_untrusted, untrusted_hint, untrusted_message
from offload.tasks import stop

__all__ = ["ErrorTail", "StderrPump", "pump_lines", "strip_ansi"]


_HINTS = (
    ("is not valid", "copy the path's references to the remote first (dependencies first)"),
    ("is not allowed", "the remote must run `nix-store --serve --write`"),
    ("protocol mismatch", "the remote program is not `nix-store --serve`"),
    ("hash mismatch", "the NAR sent did not match the narHash given for it"),
)

# ``StderrPump.heard_all``: loop turns per window (one for the loop to poll the pipe and feed the
# reader, one for the pump to run, one spare), and windows at most (64 KiB read in each).
_DRAIN_TURNS = 3
_DRAIN_WINDOWS = 64

# How much of an unterminated stderr line is kept before it is passed on anyway.
_MAX_LINE = 64 * 1024


async def pump_lines(
    stream: asyncio.StreamReader,
    on_line: Callable[[bytes], None],
    on_read: Callable[[], None] | None = None,
) -> None:
    """Read ``stream`` to its end, passing each line (without its ``\\n``) to ``on_line``, one
    longer than 64 KiB in pieces of that size; ``on_read`` is told of each read that brought
    bytes, once its whole lines are passed on."""
    pending = b""
    while True:
        try:
            chunk = await stream.read(65536)
        except (ConnectionError, OSError):
            break
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        while len(pending) > _MAX_LINE:
            lines.append(pending[:_MAX_LINE])
            pending = pending[_MAX_LINE:]
        for line in lines:
            on_line(line)
        if on_read is not None:
            on_read()
    if pending:
        on_line(pending)


class StderrPump:
    """One session's stderr read in the background (``pump_lines``) once ``start``ed, each line
    to ``on_line``, until its end; ``stream`` None (no stderr given): nothing is read."""

    def __init__(
        self,
        stream: asyncio.StreamReader | None,
        on_line: Callable[[bytes], None],
        *,
        name: str,
        timeout: float,
    ) -> None:
        self._stream = stream
        self._on_line = on_line
        self._name = name
        self._timeout = timeout  # how long its end is waited for
        self._task: asyncio.Task[None] | None = None
        self._reads = 0  # reads that brought bytes

    def start(self) -> None:
        if self._stream is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                pump_lines(self._stream, self._on_line, self._read), name=f"{self._name} stderr"
            )

    @property
    def reading(self) -> bool:
        return self._task is not None and not self._task.done()

    def _read(self) -> None:
        self._reads += 1

    async def heard_all(self) -> None:
        """Pass on what stderr's pipe already holds (the lines a build wrote before its result,
        which came on stdout, may reach this process in the same loop turn as the result).
        Loop turns, not time: in each window the loop polls the pipe, and the pump reads and
        passes on what came; the first window that brought nothing ends it. Bounded: a remote
        that keeps talking has said its build's part by then."""
        for _ in range(_DRAIN_WINDOWS):
            if not self.reading:
                return
            before = self._reads
            for _ in range(_DRAIN_TURNS):
                await asyncio.sleep(0)  # one loop turn; no time passes
            if self._reads == before:
                return

    async def ended(self) -> None:
        """Wait for the end of stderr, bounded: a remote prints its error and then exits."""
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), self._timeout)

    async def close(self) -> None:
        """Wait for the end of stderr, bounded, then stop reading it."""
        task = self._task
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), self._timeout)
            except TimeoutError:
                await stop(task)


class ErrorTail:
    """The last ``error:`` block of one request's stderr, lines without ANSI escapes, and the
    last line said (``last``).

    A block is its ``error:`` line and the lines that continue it, indented or blank, as Nix
    continues its errors: its first ``MAX_LINES``, of at most ``MAX_LINE`` characters each. The
    server prints its fatal error last and exits; a build prints ``error:`` lines of its own
    (rustc's, a test suite's) and logs on, so a block followed by more than ``AFTER`` other
    lines is not what explains the end (``as_error`` is None), and is not held beyond its
    first lines, however long the log."""

    MAX_LINES = 50
    MAX_LINE = 2000
    AFTER = 2  # Nix may follow its error with a line of advice ("(use '--show-trace' ...)")

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.after = 0
        self.last = ""

    def clear(self) -> None:
        self.lines, self.after, self.last = [], 0, ""

    def feed(self, plain: str) -> None:
        if plain.strip():
            self.last = plain[: self.MAX_LINE]
        if plain.startswith("error:"):
            self.lines, self.after = [plain[: self.MAX_LINE]], 0
        elif not self.lines:
            return
        elif not self.after and (not plain.strip() or plain[0].isspace()):
            if len(self.lines) < self.MAX_LINES:
                self.lines.append(plain[: self.MAX_LINE])
        else:
            self.after += 1

    def as_error(self, name: str) -> RemoteError | None:
        if not self.lines or self.after > self.AFTER:
            return None
        # Nix continues long errors on indented lines ("specified: ... got: ..."), and blank
        # ones (an HTTP error's "response body:"): one line, one space between words.
        text = " ".join(" ".join(self.lines).split())
        text = text.removeprefix("error:").strip()
        if is_untrusted(text):
            error = RemoteError(untrusted_message(name, text), hint=untrusted_hint(name))
            error.said = text
            return error
        hint = next((h for key, h in _HINTS if key in text), None)
        return RemoteError(f"{name}: {text}", hint=hint)
