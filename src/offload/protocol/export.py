"""NARs and export streams of the local store, written by a ``nix-store`` child, not by us.

The model: a session on the local store carries an ``Exporter`` (its ``exporter``). What it
sends elsewhere need not pass through this process: ``nix-store --export P...`` writes exactly
the body of an ImportPaths request (nix-protocols.md 3.2: each path's NAR and trailer, dependencies
first, the final ``0``), and ``nix-store --dump P`` exactly the NAR AddToStoreNar wants. Each is
a ``ChildBytes``: the receiving client moves the child's output into its connection by
``offload.protocol.pump`` (``pump_into``, spliced by the kernel), writing only its own framing;
any other consumer may call it as a plain ``NarProducer`` (the bytes then pass through here).
A receiver that sends several may start the next child (``started``: a ``StartedChild``) while
it still sends the last: the child writes into its pipe until the pipe is full, then waits.

``nix-store --export`` checks every NAR against the hash the store recorded for it and fails
if it differs, as Nix's own copy does. A child that fails, or whose output is not exactly the
size announced, raises ``ExportFailed`` naming the local store: the receiving connection is then
out of step (the receiver registers no path whose bytes did not all arrive) and is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from offload.errors import ProtocolError
from offload.process import spawn
from offload.protocol.pump import CHUNK, BulkPipe, PumpTarget, pump, wait_fd

__all__ = ["ChildBytes", "ExportFailed", "Exporter", "StartedChild"]

Sink = Callable[[bytes], Awaitable[None]]
# How much of a failing child's stderr is kept for its error.
_STDERR_KEEP = 4096


class ExportFailed(ProtocolError):
    """The local ``nix-store`` could not write what was asked (its own error is the message)."""


@dataclass(frozen=True)
class Exporter:
    """How to run the local store's ``nix-store``: ``program`` (with ``--store URI`` if any) and
    the environment; ``name`` is the store's name in errors. ``--dump`` reads the file system
    at the store path, so it is offered only for the default store (``can_dump``)."""

    program: tuple[str, ...]
    env: Mapping[str, str] | None
    name: str
    can_dump: bool = True

    def export(self, paths: Sequence[str]) -> ChildBytes:
        """The export stream of ``paths`` (``nix-store`` orders them dependencies first)."""
        return ChildBytes((*self.program, "--export", *paths), self.env, self.name, None)

    def dump(self, path: str, nar_size: int) -> ChildBytes:
        """The NAR of ``path``, which must be ``nar_size`` bytes."""
        return ChildBytes((*self.program, "--dump", path), self.env, self.name, nar_size)


@dataclass(frozen=True)
class ChildBytes:
    """A child's whole stdout, exactly ``size`` bytes when that is given (a ``NarProducer``)."""

    argv: tuple[str, ...]
    env: Mapping[str, str] | None
    name: str
    size: int | None

    async def pump_into(self, writer: PumpTarget) -> int:
        """Run the child with its output moved into ``writer``; returns the bytes moved.

        ``OSError`` from ``writer`` passes unchanged; the child's failures are ``ExportFailed``.
        """
        async with self.started() as child:
            return await child.pump_into(writer)

    async def __call__(self, sink: Sink) -> None:
        async def chunks(src: int) -> int:
            moved = 0
            while self.size is None or moved < self.size:
                want = CHUNK if self.size is None else min(CHUNK, self.size - moved)
                try:
                    data = _read(src, want)
                except BlockingIOError:
                    await wait_fd(src, write=False)
                    continue
                if not data:
                    break
                await sink(data)
                moved += len(data)
            return moved

        async with self.started() as child:
            await child.finish(chunks)

    @contextlib.asynccontextmanager
    async def started(self) -> AsyncIterator[StartedChild]:
        """The child started now, its output waiting in its pipe until it is moved (a full
        pipe holds it up); stopped on exit if it was not moved to its end."""
        with BulkPipe() as pipe:
            async with spawn(self.argv, env=self.env, stdin=False, stdout=pipe.write_end) as proc:
                assert proc.stderr is not None
                pipe.release_write()  # the child holds it now: its exit is our end of stream
                errors = asyncio.get_running_loop().create_task(proc.stderr.read())
                try:
                    yield StartedChild(self, pipe.read_end, proc, errors)
                finally:
                    if not errors.done():
                        errors.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await errors

    def checked(self, moved: int, extra: bool, code: int, stderr: bytes) -> int:
        command = shlex.join(self.argv[:3]) + (" ..." if len(self.argv) > 3 else "")
        if code != 0:
            text = stderr[-_STDERR_KEEP:].decode(errors="replace").strip().splitlines()
            why = text[-1] if text else f"exit code {code}"
            error = ExportFailed(f"{self.name}: `{command}` failed: {why}")
        elif self.size is not None and (moved != self.size or extra):
            said = "more" if extra else str(moved)
            error = ExportFailed(
                f"{self.name}: `{command}` wrote {said} bytes, narSize says {self.size}"
            )
        else:
            return moved
        error.peer = self.name
        raise error


def _read(fd: int, n: int) -> bytes:
    return os.read(fd, n)


async def _excess(src: int) -> bool:
    """Whether the child writes anything past the size it was held to."""
    while True:
        try:
            return bool(_read(src, 1))
        except BlockingIOError:
            await wait_fd(src, write=False)


@dataclass(frozen=True)
class StartedChild:
    """A running ``ChildBytes`` child: ``src`` is its pipe's read end."""

    spec: ChildBytes
    src: int
    proc: asyncio.subprocess.Process
    errors: asyncio.Task[bytes]

    async def pump_into(self, writer: PumpTarget) -> int:
        """As ``ChildBytes.pump_into``, for a child already running."""
        return await self.finish(lambda src: pump(src, writer, self.spec.size))

    async def finish(self, move: Callable[[int], Awaitable[int]]) -> int:
        """Move its output with ``move``, wait for it to exit; the bytes moved, or its failure."""
        moved = await move(self.src)
        extra = await _excess(self.src) if self.spec.size is not None else False
        code = await self.proc.wait()
        stderr = await self.errors
        return self.spec.checked(moved, extra, code, stderr)
