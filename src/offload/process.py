"""The one module that starts processes.

Everything else builds argv lists and hands them here. Child processes of async code live inside
``spawn``, an ``async with`` that always stops them (SIGTERM, a grace period, then SIGKILL to the
child's whole process group; ``stop_now`` skips the grace, for a child cut off mid-transfer).
A short command (``run``, ``Started``) given up on is stopped the same way, SIGTERM first: a Nix
killed outright leaves the builds it started running (an import-from-derivation's, a --check's),
where SIGTERM has it stop them.
A program that cannot be started is ``TransportError`` with a hint (``offload.spawn_errors``).
A script run on this host takes the ``sh`` of its PATH, else ``/bin/sh`` (``local_sh``).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from offload.errors import TransportError
from offload.procfs import running
from offload.spawn_errors import not_started
from offload.tasks import stop
from offload.threads import start, unblocked

__all__ = [
    "Completed",
    "Started",
    "local_sh",
    "output_lines",
    "run",
    "run_async",
    "spawn",
    "start_detached",
    "start_guard",
    "stop_now",
    "stop_process_group",
]

# Popen objects of detached children, kept so that we reap them and so that they are never
# garbage-collected while running: Popen.__del__ then warns "subprocess N is still running",
# which pytest's `filterwarnings = error` turns into a failure of whatever test runs next.
_DETACHED: dict[int, subprocess.Popen[bytes]] = {}


# The sh of a PATH that has none (one of Nix's programs alone, as a nix-daemon may give its
# hook): every Linux system has this one, NixOS included (its only file in /bin).
FALLBACK_SH = "/bin/sh"


def local_sh(argv: Sequence[str], env: Mapping[str, str] | None = None) -> list[str]:
    """``argv`` to run on this host: a script's ``sh`` (``sh -c ...``) is the one on
    ``env``'s PATH (ours when None), else ``FALLBACK_SH``; anything else as it is."""
    if not argv or argv[0] != "sh":
        return list(argv)
    path = (os.environ if env is None else env).get("PATH", os.defpath)
    return list(argv) if shutil.which("sh", path=path) else [FALLBACK_SH, *argv[1:]]


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> Completed:
        if self.returncode != 0:
            last = self.stderr.strip().splitlines()[-1:] or ["(no output)"]
            msg = f"`{shlex.join(self.argv)}` failed with exit code {self.returncode}: {last[0]}"
            raise TransportError(msg)
        return self


def run(
    argv: Sequence[str],
    *,
    stdin: str | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float | None = None,
    cwd: Path | None = None,
) -> Completed:
    """Run a short command to completion and capture its output as text."""
    proc = _captured(
        argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL, env=env, cwd=cwd
    )
    with proc:  # as subprocess.run: killed if not done, and waited for
        try:
            stdout, stderr = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            _end(proc)
            msg = f"`{shlex.join(argv)}` did not finish within {timeout} s"
            raise TransportError(msg) from exc
        except BaseException:
            _end(proc)
            raise
    done = Completed(tuple(argv), proc.returncode, stdout, stderr)
    return done.check() if check else done


# How long a short command given up on has after SIGTERM before SIGKILL: Nix stops its builds.
_GRACE = 3.0


def _end(proc: subprocess.Popen[Any], grace: float = _GRACE) -> None:
    """Stop ``proc`` if it still runs: SIGTERM, then SIGKILL if it outlives ``grace``."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()


def _spawn(argv: Sequence[str], cwd: Path | None = None, **options: Any) -> subprocess.Popen[Any]:  # noqa: ANN401 - Popen's
    """``subprocess.Popen(argv, ...)``; one that cannot start is said as ``not_started`` says."""
    try:
        # For the spawn only: Nix stays stoppable whichever thread starts it, and a worker
        # thread waits with the signals blocked (offload.threads).
        with unblocked():
            return subprocess.Popen(list(argv), cwd=cwd, **options)
    except OSError as exc:
        raise not_started(argv, exc, cwd) from exc


def _captured(
    argv: Sequence[str], *, stdin: int | None, env: Mapping[str, str] | None, cwd: Path | None
) -> subprocess.Popen[str]:
    """``argv`` started with its stdout and stderr captured as text."""
    return _spawn(
        argv,
        cwd,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Nix prints a file's bytes as they are (a Latin-1 .nix file in an error).
        errors="replace",
        env=dict(env) if env is not None else None,
    )


class Started:
    """A short command started now and finished later: its output is captured as ``run``
    captures it, so the caller can work while it runs. ``stop`` ends it if it still runs
    (the caller gave up on it: an error, Ctrl-C), so it never outlives the caller's block.
    With ``stderr_lines``, each line of its stderr also goes there as it comes (from a
    thread of its own), for a command whose stderr a user watches (Nix building while it
    evaluates)."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        inherit_stdin: bool = False,
        stderr_lines: Callable[[str], None] | None = None,
    ) -> None:
        self.argv = tuple(argv)
        # Our standard input, for a command that reads it (nix-build's "-").
        stdin = None if inherit_stdin else subprocess.DEVNULL
        self._proc = _captured(argv, stdin=stdin, env=env, cwd=cwd)
        self._said: list[str] = []
        self._reader: threading.Thread | None = None
        self._killer: threading.Thread | None = None  # ``terminate``'s SIGKILL to come
        if stderr_lines is not None:
            self._reader = start(
                threading.Thread(
                    target=self._relay, args=(stderr_lines,), name="stderr", daemon=True
                )
            )

    def _relay(self, stderr_lines: Callable[[str], None]) -> None:
        assert self._proc.stderr is not None  # stderr=PIPE
        for line in self._proc.stderr:
            self._said.append(line)
            stderr_lines(line.rstrip("\n"))

    def _ended(self) -> tuple[str, str]:
        """Its whole stdout and stderr, once it has exited."""
        try:
            return self._output()
        finally:
            if isinstance(self._killer, threading.Timer):
                self._killer.cancel()  # it ended: nothing left to kill

    def _output(self) -> tuple[str, str]:
        if self._reader is None:
            return self._proc.communicate()
        assert self._proc.stdout is not None  # stdout=PIPE
        out = self._proc.stdout.read()
        self._proc.wait()
        self._reader.join()
        self._proc.stdout.close()
        assert self._proc.stderr is not None
        self._proc.stderr.close()
        return out, "".join(self._said)

    def finish(self) -> Completed:
        """Wait for the command's end; its output, as ``run(check=False)`` returns it."""
        out, err = self._ended()
        return Completed(self.argv, self._proc.returncode, out, err)

    def terminate(self) -> None:
        """SIGTERM it if it still runs, from any thread, without waiting: ``finish`` waiting
        for it in another then returns once it has stopped; SIGKILL follows after the grace
        if it has not (a Nix blocked on a lock), so that wait is bounded."""
        self._proc.terminate()  # nothing if it was reaped already
        # A daemon, cancelled once the command is reaped: a thread left running kept the
        # process from its quick exit (``cli._end``), and Python's own then ended it by SIGINT.
        killer = threading.Timer(_GRACE, self._kill_if_running)
        killer.daemon = True
        self._killer = start(killer)

    def _kill_if_running(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()

    def stop(self) -> None:
        _end(self._proc)
        self._ended()  # reaped, its pipes closed


def output_lines(argv: Sequence[str]) -> Generator[str, None, None] | None:
    """A command's standard output line by line as it comes, for output too big to hold (a
    build log of hundreds of MiB); None when it failed without printing a line. Its standard
    error is dropped (a pipe nobody reads would stop it); a reader that stops early stops it."""
    proc = _spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None  # stdout=PIPE
    # Lines end at "\n" alone, a "\r" kept in its line (a progress bar's redraws), as
    # offload's own logs are read: Popen's text mode made each "\r" a line of its own.
    out = io.TextIOWrapper(proc.stdout, encoding="utf-8", errors="replace", newline="\n")
    first = out.readline()
    if not first and proc.wait() != 0:
        out.close()
        return None
    return _rest(proc, out, first)


def _rest(proc: subprocess.Popen[bytes], out: IO[str], first: str) -> Generator[str, None, None]:
    try:
        if first:
            yield first
        yield from out
    finally:
        _end(proc)
        out.close()
        proc.wait()


async def run_async(
    argv: Sequence[str],
    *,
    stdin: bytes | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
) -> Completed:
    """Run a command to completion from async code; stopped if the caller is cancelled."""
    async with spawn(argv, env=env, stdin=stdin is not None) as proc:
        out, err = await proc.communicate(stdin)
    done = _completed(argv, proc, out, err)
    return done.check() if check else done


def _completed(
    argv: Sequence[str], proc: asyncio.subprocess.Process, out: bytes, err: bytes
) -> Completed:
    """An async child's end as ``Completed``: its output decoded as ``run`` decodes it."""
    return Completed(
        tuple(argv),
        proc.returncode if proc.returncode is not None else -1,
        out.decode(errors="replace"),
        err.decode(errors="replace"),
    )


async def run_greeted(
    argv: Sequence[str],
    *,
    greeting: bytes,
    answer_size: int,
    env: Mapping[str, str] | None = None,
) -> Completed:
    """Run a command that may answer a greeting: write ``greeting``, keep stdin open until
    ``answer_size`` bytes come back or stdout ends, then close it and run to completion.

    Stdin stays open because a program that watches its input (Nix's daemon does, to notice
    a client gone away) is interrupted by an EOF that comes before its answer, and then
    never answers: closing at once made that a race."""
    async with spawn(argv, env=env) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        assert proc.stderr is not None
        errors = asyncio.ensure_future(proc.stderr.read())
        try:
            with contextlib.suppress(OSError):
                proc.stdin.write(greeting)
            try:
                head = await proc.stdout.readexactly(answer_size)
            except asyncio.IncompleteReadError as exc:
                head = exc.partial
            proc.stdin.close()
            out = head + await proc.stdout.read()
            err = await errors
            await proc.wait()
        finally:
            errors.cancel()
    return _completed(argv, proc, out, err)


@contextlib.asynccontextmanager
async def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdin: bool = True,
    stdout: int | None = None,
    grace: float = _GRACE,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Start a child with piped stdio in its own process group; always stop it on exit.

    ``stdout``: a file descriptor the child writes to instead of a pipe to us (bulk bytes that
    go straight to where they belong: ``offload.protocol.export``)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout is None else stdout,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            limit=1 << 20,
        )
    except OSError as exc:
        raise not_started(argv, exc) from exc
    try:
        yield proc
    finally:
        await _ended(proc, grace)


async def _ended(proc: asyncio.subprocess.Process, grace: float) -> None:
    """Stop ``proc`` (``_stop``) while what is left of its stdout is read and dropped, and go
    on reading for ``_DRAIN_SECONDS`` at most once it is gone: asyncio's wait(), begun before
    the exit is seen, returns only once the child's pipes have ended too, and a stdout holding
    more unread bytes than its limit (a transfer cut off) is read no further, so its end was
    never seen and the whole grace passed, even for a child killed already (``stop_now``); and
    a pipe left unread keeps its transport until it is collected, maybe after the event loop
    ("Exception ignored ... Event loop is closed")."""
    reading = None
    if proc.stdout is not None and not proc.stdout.at_eof():
        reading = asyncio.get_running_loop().create_task(_discard_stdout(proc))
    try:
        await _stop(proc, grace)
        if reading is not None:
            # A child of its own holding the pipe (``sleep 1 &``) would keep it open: bounded.
            await asyncio.wait([reading], timeout=_DRAIN_SECONDS)
    finally:
        if reading is not None:
            await stop(reading)


async def _stop(proc: asyncio.subprocess.Process, grace: float) -> None:
    if proc.stdin is not None and not proc.stdin.is_closing():
        proc.stdin.close()
    if proc.returncode is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), wait)
        except TimeoutError:
            continue
        return


async def _discard_stdout(proc: asyncio.subprocess.Process) -> None:
    """Read a stopping child's stdout to its end, dropping it (chunk by chunk: a child that
    ignores SIGTERM may write on for the whole grace)."""
    assert proc.stdout is not None
    # RuntimeError: a task of the caller's reads it, and so keeps it read (then that task
    # drains it).
    with contextlib.suppress(OSError, RuntimeError):
        while await proc.stdout.read(1 << 16):
            pass


# How long a stopped child's leftover output is read for (it is in the pipe already).
_DRAIN_SECONDS = 0.5


def stop_now(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL a child of ``spawn`` (its whole process group) without a grace period: one cut
    off mid-transfer has nothing left to say, and may be blocked writing to a pipe nobody
    reads. ``spawn`` still waits for it (at once) on exit."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def start_detached(argv: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None) -> int:
    """Start a long-lived daemon in its own session, output to ``log``; return its pid."""
    with log.open("ab") as out:
        proc = _spawn(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
    _DETACHED[proc.pid] = proc
    return proc.pid


def start_guard(argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> IO[bytes]:
    """Start ``argv`` in a session of its own (so a kill of our process group spares it), with
    stdin a pipe whose write end only we hold; returns that end. The guard learns that we are
    gone, however we went, from EOF on its stdin."""
    proc = _spawn(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(env) if env is not None else None,
        start_new_session=True,
    )
    assert proc.stdin is not None
    # Not reaped by us when we exit first: it is reparented, and init reaps it.
    _DETACHED[proc.pid] = proc
    return proc.stdin


def stop_process_group(pid: int, *, grace: float = _GRACE) -> None:
    """SIGTERM a detached process group, then SIGKILL whatever is left after ``grace`` s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        if _wait_gone(pid, grace):
            return


def _wait_gone(pid: int, timeout: float) -> bool:
    # Our detached children are reaped here when they are ours; otherwise poll /proc.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = _DETACHED.get(pid)
        if proc is not None:
            done = pid if proc.poll() is not None else 0
        else:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                # Not our child: someone else reaps it, and some init processes (containers,
                # microVMs) are slow to or never do, so a zombie counts as gone.
                done = 0 if running(pid) else pid
        if done == pid:
            _DETACHED.pop(pid, None)
            return True
        time.sleep(0.02)
    return False
