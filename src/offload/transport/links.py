"""Links: one per builder per run, lending out long-lived serve sessions.

The model: a ``Link`` owns a pool of ``nix-store --serve --write`` sessions to one store. A
borrower writes ``async with link.session() as client`` and gets a handshaken ``ServeClient``;
at most ``max_sessions`` are out at once (a builder's slots plus one for copying), sessions are
opened lazily and an idle one is lent again rather than a new one opened. A session goes back to
the pool only if the body ended normally and the client is still in step with its remote;
otherwise it is discarded, and if a request was cut short (cancelled, connection lost) the
remote process tree is stopped first, because a build keeps running on the builder after the
local end goes away. ``link.cancel(client)`` does the same on demand, e.g. when a speculative
build lost or the user pressed Ctrl-C.

Where the sessions come from is a ``SessionTransport``: ``SshTransport`` (one ControlMaster
connection per builder, sessions multiplexed over it, remote kills sent over it too) or
``LocalTransport`` (a local ``nix-store --serve --write``). Both report the serve process's pid
out of band, on stderr before anything else; that line never reaches the log handlers. Tests
may pass any other transport, e.g. in-memory pipes to a scripted peer.

The same start line carries the machine's cores, load and boot id (``offload.load``). A link
keeps the first load a session reported as ``link.load`` (a ``RemoteLoad``; None while the
machine has not said, e.g. one without ``/proc``), so a run learns every builder's load from
the session it opens there anyway, without a round trip of its own.

Bytes through each session's stdin and stdout are counted in ``link.stats`` (protocol bytes,
before ssh's own compression and encryption).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self

from offload.errors import OffloadError, ProtocolError, SshError, TransportError
from offload.load import RemoteLoad
from offload.process import run_async, spawn
from offload.protocol.serve import ByteWriter, ServeClient
from offload.protocol.wire import ByteReader
from offload.transport.ssh import (
    CONNECT_TIMEOUT,
    MASTER_READY,
    SshTarget,
    kill_script,
    known_hosts_line,
    master_argv,
    parse_start_line,
    remote_command,
    serve_argv,
    serve_command,
    ssh_argv,
    ssh_target,
)

if TYPE_CHECKING:
    from offload.config.machines import Machine

__all__ = [
    "Link",
    "LinkStats",
    "LocalLink",
    "LocalTransport",
    "LogSink",
    "MachineLink",
    "SessionPipes",
    "SessionTransport",
    "SshTransport",
    "read_start_line",
]

logger = logging.getLogger(__name__)

LogSink = Callable[[str], None]

_TAIL = 20
_KILL_GRACE = 5
# How long a kill over the master, or `ssh -O exit`, may take before we give up on it.
_CONTROL_TIMEOUT = 15.0
# How long a master may take to leave once its stdin is closed.
_MASTER_EXIT = 2.0
# Authentication can stall after the TCP connect that ConnectTimeout covers.
_AUTH_SLACK = 15.0


@dataclass
class LinkStats:
    """What one link moved: serve-protocol bytes written and read, sessions started."""

    bytes_sent: int = 0
    bytes_received: int = 0
    sessions_opened: int = 0


@dataclass
class SessionPipes:
    """A started serve process: its pipes, its pid (for remote kills), a liveness test, and the
    load its start line reported."""

    reader: ByteReader
    writer: ByteWriter
    stderr: asyncio.StreamReader | None
    pid: int | None
    alive: Callable[[], bool] = lambda: True
    early_stderr: tuple[str, ...] = ()
    load: RemoteLoad | None = None


class SessionTransport(Protocol):
    """Where sessions come from. ``start`` registers cleanup of what it starts on ``stack``."""

    name: str

    async def start(self, stack: contextlib.AsyncExitStack) -> SessionPipes: ...
    async def kill(self, pid: int) -> None: ...
    async def close(self) -> None: ...


class _CountingReader:
    def __init__(self, inner: ByteReader, stats: LinkStats) -> None:
        self._inner = inner
        self._stats = stats

    async def readexactly(self, n: int) -> bytes:
        data = await self._inner.readexactly(n)
        self._stats.bytes_received += len(data)
        return data


class _CountingWriter:
    def __init__(self, inner: ByteWriter, stats: LinkStats) -> None:
        self._inner = inner
        self._stats = stats

    def write(self, data: bytes) -> None:
        self._stats.bytes_sent += len(data)
        self._inner.write(data)

    async def drain(self) -> None:
        await self._inner.drain()

    def close(self) -> None:
        self._inner.close()

    async def wait_closed(self) -> None:
        wait_closed = getattr(self._inner, "wait_closed", None)
        if wait_closed is not None:
            await wait_closed()


@dataclass(eq=False)
class _LogRoute:
    """A session's stderr: kept as a short tail for errors, passed to the current borrower."""

    tail: deque[str] = field(default_factory=lambda: deque(maxlen=_TAIL))
    sink: LogSink | None = None

    def log(self, line: str) -> None:
        self.tail.append(line)
        if self.sink is not None:
            self.sink(line)


@dataclass(eq=False)
class _Session:
    client: ServeClient
    stack: contextlib.AsyncExitStack
    pipes: SessionPipes
    logs: _LogRoute
    teardown: asyncio.Task[None] | None = None


async def read_start_line(
    stderr: asyncio.StreamReader, timeout: float
) -> tuple[int | None, RemoteLoad | None, tuple[str, ...]]:
    """Read stderr up to the start line; returns its pid (None at EOF), the load it reported
    (None if it did not say) and the lines before it.

    Lines before it are ssh's own (warnings, or why it could not connect).
    """
    early: list[str] = []

    async def scan() -> tuple[int, RemoteLoad | None] | None:
        while line := await stderr.readline():
            text = line.decode(errors="replace").rstrip("\r\n")
            start = parse_start_line(text)
            if start is not None:
                return start
            early.append(text)
            del early[:-_TAIL]
        return None

    try:
        start = await asyncio.wait_for(scan(), timeout)
    except TimeoutError:
        early.append(f"(no answer within {timeout:g} s)")
        start = None
    if start is None:
        return None, None, tuple(early)
    return start[0], start[1], tuple(early)


class Link:
    """A pool of serve sessions to one store; use as ``async with``. See the module docstring."""

    def __init__(
        self,
        transport: SessionTransport,
        *,
        max_sessions: int = 2,
        substitute: bool = False,
    ) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self.name = transport.name
        self.max_sessions = max_sessions
        # builders-use-substitutes: pass to query_valid_paths when sending inputs.
        self.substitute = substitute
        self.stats = LinkStats()
        # What the first start line that told it said about the machine's load (offload.load).
        self.load: RemoteLoad | None = None
        self._transport = transport
        self._slots = asyncio.Semaphore(max_sessions)
        self._idle: list[_Session] = []
        self._sessions: dict[ServeClient, _Session] = {}
        self._teardowns: set[asyncio.Task[None]] = set()
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @contextlib.asynccontextmanager
    async def session(self, on_log: LogSink | None = None) -> AsyncIterator[ServeClient]:
        """Borrow a handshaken client; its stderr lines go to ``on_log`` while borrowed."""
        async with self._slots:
            session = await self._checkout()
            session.logs.sink = on_log
            try:
                yield session.client
            except BaseException:
                await self._discard(session, kill=not session.client.usable)
                raise
            session.logs.sink = None
            if session.teardown is not None:
                await _wait(session.teardown)  # cancelled while lent
            elif session.client.usable and session.pipes.alive() and not self._closed:
                self._idle.append(session)
            else:
                await self._discard(session, kill=not session.client.usable)

    async def warm(self, count: int) -> None:
        """Open sessions, in parallel, until ``count`` are open (idle ones count), so the first
        builds on each slot do not each wait for a remote ``nix-store`` to start. A failure is
        left for the next borrower to meet and report."""
        missing = min(count, self.max_sessions) - len(self._sessions)
        if missing <= 0 or self._closed:
            return

        async def one() -> None:
            with contextlib.suppress(OffloadError):
                async with self._slots:
                    session = await self._open()
                    if self._closed:
                        await self._discard(session, kill=False)
                    else:
                        self._idle.append(session)

        await asyncio.gather(*(one() for _ in range(missing)))

    async def query_valid(self, paths: Iterable[str]) -> set[str]:
        """Which of ``paths`` are valid on this store, substituting first if ``substitute``."""
        async with self.session() as client:
            return await client.query_valid_paths(paths, substitute=self.substitute)

    async def cancel(self, client: ServeClient) -> None:
        """Stop ``client``'s remote process tree (and the build it runs) and discard it.

        Safe to call while another task is in a request on ``client`` (that request then fails)
        and after the session was discarded already (then it waits for that teardown).
        """
        session = self._sessions.get(client)
        if session is None:
            return
        await self._discard(session, kill=True)

    async def aclose(self) -> None:
        """Close every session (stopping remote processes of any still lent), then the transport."""
        self._closed = True
        try:
            for session in list(self._sessions.values()):
                lent = session not in self._idle
                await self._discard(session, kill=lent or not session.client.usable)
            while self._teardowns:
                await _wait(next(iter(self._teardowns)))
        finally:
            self._idle.clear()
            await self._transport.close()

    @property
    def open_sessions(self) -> int:
        return len(self._sessions)

    # -- internals ---------------------------------------------------------------------------

    async def _checkout(self) -> _Session:
        if self._closed:
            raise TransportError(f"{self.name}: the link is closed")
        while self._idle:
            session = self._idle.pop()
            if session.client.usable and session.pipes.alive():
                return session
            await self._discard(session, kill=False)
        return await self._open()

    async def _open(self) -> _Session:
        stack = contextlib.AsyncExitStack()
        try:
            pipes = await self._transport.start(stack)
            if self.load is None:
                self.load = pipes.load
            logs = _LogRoute()
            logs.tail.extend(pipes.early_stderr)
            client = ServeClient(
                _CountingReader(pipes.reader, self.stats),
                _CountingWriter(pipes.writer, self.stats),
                stderr=pipes.stderr,
                on_log=logs.log,
                name=self.name,
            )
            session = _Session(client, stack, pipes, logs)
            stack.push_async_callback(client.close)
            self.stats.sessions_opened += 1
            try:
                await client.handshake()
            except ProtocolError as exc:
                tail = " | ".join(list(logs.tail)[-5:]) or "(no output)"
                raise TransportError(
                    f"{self.name}: cannot start `nix-store --serve`: {exc.message}; stderr: {tail}",
                    hint="check that Nix is installed and on PATH for non-interactive "
                    "ssh sessions (remote-program= in the store URI names another program)",
                ) from exc
        except BaseException:
            await _close_shielded(stack)
            raise
        self._sessions[client] = session
        return session

    async def _discard(self, session: _Session, *, kill: bool) -> None:
        if session.teardown is None:
            with contextlib.suppress(ValueError):
                self._idle.remove(session)
            task = asyncio.get_running_loop().create_task(
                self._teardown(session, kill=kill), name=f"{self.name} session teardown"
            )
            session.teardown = task
            self._teardowns.add(task)
            task.add_done_callback(self._teardowns.discard)
        await _wait(session.teardown)

    async def _teardown(self, session: _Session, *, kill: bool) -> None:
        try:
            if kill and session.pipes.pid is not None:
                try:
                    await self._transport.kill(session.pipes.pid)
                except OffloadError as exc:
                    logger.warning("%s: could not stop remote process: %s", self.name, exc)
            await session.stack.aclose()
        finally:
            self._sessions.pop(session.client, None)


async def _wait(task: asyncio.Task[None]) -> None:
    """Wait for a teardown; a second cancellation of the waiter does not stop the teardown."""
    await asyncio.shield(task)


async def _close_shielded(stack: contextlib.AsyncExitStack) -> None:
    """Close ``stack`` to the end even if the caller is cancelled meanwhile."""
    task = asyncio.get_running_loop().create_task(stack.aclose())
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


# -- local ----------------------------------------------------------------------------------


class LocalTransport:
    """``nix-store --serve --write`` on this machine (as Hydra does for localhost)."""

    def __init__(
        self,
        *,
        name: str = "local",
        params: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.name = name
        self._params = params
        self._env = env
        self._start_timeout = start_timeout

    async def start(self, stack: contextlib.AsyncExitStack) -> SessionPipes:
        proc = await stack.enter_async_context(spawn(serve_command(self._params), env=self._env))
        stack.push_async_callback(_drain_dead, proc)
        assert proc.stdout is not None
        assert proc.stdin is not None
        assert proc.stderr is not None
        pid, load, early = await read_start_line(proc.stderr, self._start_timeout)
        if pid is None:
            tail = " | ".join(early[-5:]) or "(no output)"
            raise TransportError(f"{self.name}: `nix-store --serve` did not start: {tail}")
        return SessionPipes(
            proc.stdout, proc.stdin, proc.stderr, pid, lambda: proc.returncode is None, early, load
        )

    async def kill(self, pid: int) -> None:
        await asyncio.wait_for(
            run_async(kill_script(pid, _KILL_GRACE), env=self._env, check=False),
            _CONTROL_TIMEOUT,
        )

    async def close(self) -> None:
        return None


class LocalLink(Link):
    """The local store behind the same interface as a builder."""

    def __init__(
        self,
        *,
        max_sessions: int = 2,
        env: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        substitute: bool = False,
    ) -> None:
        super().__init__(
            LocalTransport(params=params, env=env),
            max_sessions=max_sessions,
            substitute=substitute,
        )


# -- ssh ------------------------------------------------------------------------------------


def _private_dir() -> Path:
    # Unix socket paths are limited to ~104 bytes; a long $TMPDIR would not fit the ssh socket.
    base = tempfile.gettempdir()
    # 40 leaves room for "/ofl-XXXXXXXX/m" under the limit.
    if len(base) > 40:
        base = "/tmp"  # noqa: S108 - a private 0700 directory is made inside it
    return Path(tempfile.mkdtemp(prefix="ofl-", dir=base))  # mkdtemp makes it 0700


def _ssh_hint(tail: str) -> str:
    if "Host key verification failed" in tail or "REMOTE HOST IDENTIFICATION" in tail:
        return "the builder's host key does not match the pinned one (column 8 of machines)"
    if "Permission denied" in tail:
        return "check the ssh key (column 3 of machines) and the builder's authorized_keys"
    if "Connection refused" in tail or "timed out" in tail or "resolve" in tail:
        return "is the builder up and sshd listening? Leave it out with --exclude"
    return "try the same ssh command by hand, or leave the builder out with --exclude"


class SshTransport:
    """Serve sessions over one ssh master connection to a builder."""

    def __init__(
        self,
        target: SshTarget,
        *,
        name: str,
        params: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        connect_timeout: int = CONNECT_TIMEOUT,
    ) -> None:
        self.name = name
        self.target = target
        self._params = params
        self._env = dict(os.environ if env is None else env)
        self._sshopts = self._env.get("NIX_SSHOPTS", "")
        self._connect_timeout = connect_timeout
        self._dir: Path | None = None
        self._master_stack: contextlib.AsyncExitStack | None = None
        self._master: asyncio.subprocess.Process | None = None
        self._master_tail: deque[str] = deque(maxlen=_TAIL)
        self._lock = asyncio.Lock()

    @property
    def control_path(self) -> Path | None:
        return None if self._dir is None else self._dir / "m"

    @property
    def known_hosts(self) -> Path | None:
        if self._dir is None or not self.target.public_host_key:
            return None
        return self._dir / "known_hosts"

    @property
    def master_pid(self) -> int | None:
        return None if self._master is None else self._master.pid

    def _error(self, what: str, tail: Iterable[str]) -> SshError:
        lines = [line for line in tail if line.strip()]
        text = " | ".join(lines[-5:]) or "(ssh printed nothing)"
        return SshError(
            f"cannot {what} builder '{self.name}' ({self.target.destination}): {text}",
            hint=_ssh_hint(text),
        )

    async def _ensure_master(self) -> Path:
        async with self._lock:
            if self._master is not None and self._master.returncode is None:
                assert self.control_path is not None
                return self.control_path
            await self._stop_master()
            if self._dir is None:
                self._dir = _private_dir()
            if self.known_hosts is not None:
                self.known_hosts.write_text(known_hosts_line(self.target))
                self.known_hosts.chmod(0o600)
            control = self.control_path
            assert control is not None
            argv = master_argv(
                self.target,
                control_path=control,
                known_hosts=self.known_hosts,
                nix_sshopts=self._sshopts,
                connect_timeout=self._connect_timeout,
            )
            stack = contextlib.AsyncExitStack()
            self._master_stack = stack
            proc = await stack.enter_async_context(spawn(argv, env=self._env, grace=2.0))
            self._master = proc
            self._master_tail.clear()
            assert proc.stdout is not None
            assert proc.stderr is not None
            drain = asyncio.get_running_loop().create_task(self._drain(proc.stderr))
            stack.push_async_callback(_finish, drain)
            try:
                line = await asyncio.wait_for(
                    proc.stdout.readline(), self._connect_timeout + _AUTH_SLACK
                )
            except TimeoutError:
                line = b""
                self._master_tail.append("(no answer within the connect timeout)")
            # Read stdout to its end too, so the process's transport closes when it exits.
            rest = asyncio.get_running_loop().create_task(proc.stdout.read())
            stack.push_async_callback(_finish, rest)
            if line.decode(errors="replace").strip() != MASTER_READY:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 2.0)
                    await asyncio.wait_for(asyncio.shield(drain), 2.0)
                error = self._error("connect to", self._master_tail)
                await self._stop_master()
                raise error
            return control

    async def _drain(self, stream: asyncio.StreamReader) -> None:
        # The master's stderr must be read or ssh blocks once the pipe is full.
        while line := await stream.readline():
            self._master_tail.append(line.decode(errors="replace").rstrip())

    async def _stop_master(self) -> None:
        stack, self._master_stack = self._master_stack, None
        proc, self._master = self._master, None
        if stack is None:
            return
        if proc is not None and proc.returncode is None and proc.stdin is not None:
            # The master's own remote command ends at EOF on its stdin; with no session left,
            # ssh then exits cleanly (socket removed, totals logged), as on `ssh -O exit` but
            # without starting another ssh. Only a master that does not is signalled (stack).
            proc.stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(proc.wait()), _MASTER_EXIT)
        await stack.aclose()

    async def start(self, stack: contextlib.AsyncExitStack) -> SessionPipes:
        control = await self._ensure_master()
        argv = serve_argv(
            self.target,
            params=self._params,
            known_hosts=self.known_hosts,
            nix_sshopts=self._sshopts,
            control_path=control,
            connect_timeout=self._connect_timeout,
        )
        proc = await stack.enter_async_context(spawn(argv, env=self._env))
        stack.push_async_callback(_drain_dead, proc)
        assert proc.stdout is not None
        assert proc.stdin is not None
        assert proc.stderr is not None
        pid, load, early = await read_start_line(proc.stderr, self._connect_timeout + _AUTH_SLACK)
        if pid is None:
            raise self._error("open a session on", early)
        return SessionPipes(
            proc.stdout, proc.stdin, proc.stderr, pid, lambda: proc.returncode is None, early, load
        )

    async def run(self, remote: list[str]) -> tuple[int, str, str]:
        """Run a command on the builder over the master; returns (exit code, stdout, stderr)."""
        control = await self._ensure_master()
        argv = ssh_argv(
            self.target,
            known_hosts=self.known_hosts,
            nix_sshopts=self._sshopts,
            control_path=control,
            connect_timeout=self._connect_timeout,
        )
        done = await asyncio.wait_for(
            run_async([*argv, remote_command(remote)], env=self._env, check=False),
            _CONTROL_TIMEOUT + _KILL_GRACE,
        )
        return done.returncode, done.stdout, done.stderr

    async def kill(self, pid: int) -> None:
        code, _, err = await self.run(kill_script(pid, _KILL_GRACE))
        if code != 0:
            raise self._error(f"stop process {pid} on", [err])

    async def close(self) -> None:
        try:
            await self._stop_master()
        finally:
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None


async def _drain_dead(proc: asyncio.subprocess.Process) -> None:
    # A child that died on its own (its connection dropped) is not waited for by spawn; read
    # what is left of its stdout so asyncio can close its transport.
    if proc.returncode is not None and proc.stdout is not None:
        with contextlib.suppress(TimeoutError, OSError):
            await asyncio.wait_for(proc.stdout.read(), 2.0)


async def _finish(task: asyncio.Task[Any]) -> None:
    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(task, 2.0)


class MachineLink(Link):
    """A builder reached over ssh: one master connection, up to ``max_sessions`` sessions."""

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
    ) -> None:
        self.ssh = SshTransport(
            target, name=name, params=params, env=env, connect_timeout=connect_timeout
        )
        super().__init__(self.ssh, max_sessions=max_sessions, substitute=substitute)

    @classmethod
    def from_machine(
        cls,
        machine: Machine,
        *,
        env: Mapping[str, str] | None = None,
        substitute: bool | None = None,
        max_sessions: int | None = None,
        connect_timeout: int = CONNECT_TIMEOUT,
    ) -> MachineLink:
        """A link sized for ``machine``: its slots plus one session for copying.

        ``substitute`` defaults to the machine's ``builders-use-substitutes`` URI parameter.
        """
        if substitute is None:
            substitute = machine.params.get("builders-use-substitutes", "false") == "true"
        return cls(
            ssh_target(machine),
            name=machine.name,
            params=machine.params,
            max_sessions=max_sessions if max_sessions is not None else machine.max_jobs + 1,
            env=env,
            substitute=substitute,
            connect_timeout=connect_timeout,
        )
