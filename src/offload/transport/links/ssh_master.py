"""A builder over ssh: ``SshTransport`` keeps one ControlMaster connection per builder and
multiplexes sessions (serve, or the daemon's for ssh-ng://) over it (remote kills go over it
too).

The master is started on first use and again if it died. It reports readiness on its stdout
(``MASTER_READY``); its stderr is drained all along, both so that ssh never blocks on a full pipe
and so that a failure can be explained with ssh's own last words and a hint. The control socket
and the pinned known_hosts file live in a private 0700 directory removed on ``close``.
Closing asks a master that answered to leave in order (EOF on its stdin, up to 2 s); one still
in its handshake (a builder that accepted TCP and never spoke) reads no stdin and carries no
session, so it is signalled at once: a run's end never waits on a builder that never answered.

The master is sent the hello of the builder's protocol (``dialect``: serve for ssh://, the
daemon's for ssh-ng://) as soon as it starts. A normal builder's ``cat`` swallows it; a builder
whose key runs only that protocol's program answers it instead of saying it is ready, which
tells at once, on the connection every run opens anyway, that the builder is *restricted*
(``SshTransport.restricted``): its sessions are then started as the bare program, and
commands of our own (``run``, ``kill``) cannot be run there. ``MachineLink`` (``machine``) pools
its sessions.

With ``shared`` (``offload build``), the master is the builder's persistent one
(``offload.transport.persist``): one left by an earlier run or an ``offload-hook`` is used as it
is, no handshake; otherwise the one started here stays in the background after the run, for the
next. A reused master's restriction is learnt from the first session, as the hook learns it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from offload.errors import SshError, TransportError
from offload.process import run_async, spawn
from offload.tasks import stop
from offload.transport.ciphers import offered_ciphers
from offload.transport.dialect import SERVE, Dialect
from offload.transport.links.base import (
    CONTROL_TIMEOUT,
    KILL_GRACE,
    TAIL,
    SessionPipes,
    drain_dead,
    first_words,
    open_serve,
)
from offload.transport.links.first_session import FirstSession
from offload.transport.links.ssh_errors import shell_noise, ssh_error
from offload.transport.persist import PERSIST_SECONDS, SharedPaths, master_alive, pin_error
from offload.transport.scratch import private_dir
from offload.transport.ssh import (
    CONNECT_TIMEOUT,
    MASTER_READY,
    SshTarget,
    known_hosts_line,
    master_argv,
    remote_command,
    serve_argv,
    ssh_argv,
    ssh_keepalive,
)
from offload.transport.wrapper import NO_CLIENT, kill_script

__all__ = ["SshTransport"]

# How long a master may take to leave once its stdin is closed.
_MASTER_EXIT = 2.0
# Authentication can stall after the TCP connect that ConnectTimeout covers.
_AUTH_SLACK = 15.0
# A remote stop after the connection was lost: ssh's ConnectTimeout (it covers the banner too).
KILL_CONNECT_TIMEOUT = 3


async def _finish(task: asyncio.Task[Any]) -> None:
    """Give a reader of the master's output up to 2 s more to reach its end, then stop it; an
    error it ended with is raised."""
    try:
        await asyncio.wait([task], timeout=2.0)
    finally:
        await stop(task)


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
        dialect: Dialect = SERVE,
        shared: Path | None = None,
    ) -> None:
        # ``shared``: the directory of persistent masters (module docstring); None: a master
        # of this object's own, in a private directory removed on ``close``.
        self.name = name
        self.target = target
        self.dialect = dialect
        self.params = params
        self._env = dict(os.environ if env is None else env)
        self._sshopts = self._env.get("NIX_SSHOPTS", "")
        self._connect_timeout = connect_timeout
        # ssh's keepalives here, the user's first: how long a silent builder keeps a session.
        self.keepalive = ssh_keepalive(target, self._sshopts)
        self._shared = None if shared is None else SharedPaths(shared, target, self._sshopts)
        self._reused = False  # the shared master was there already: no process of ours
        self._dir: Path | None = None
        self._master_stack: contextlib.AsyncExitStack | None = None
        self._master: asyncio.subprocess.Process | None = None
        self._master_tail: deque[str] = deque(maxlen=TAIL)
        # The master's first words came (ready, a restricted builder's reply, or why not): its
        # handshake is over, so it reads its stdin and may be asked to leave in order.
        self._answered = False
        self._lock = asyncio.Lock()
        # The master started ahead of the first session (``connect_early``) while it connects;
        # ``_spawned`` is set once its process runs.
        self._early: asyncio.Task[Path] | None = None
        self._spawned = asyncio.Event()
        # The first session, begun by ``connect_early`` over a master that was there already.
        self._first: FirstSession | None = None
        # The builder's key runs only the serve program (module docstring); learnt on connect.
        self.restricted = False
        # The builder's cores as a session reported them: later sessions are told them (no
        # ``nproc`` there each time, ``offload.transport.wrapper``).
        self.cores: int | None = None
        # The Ciphers its last master started here was given (None: ssh's own order; a master
        # found running is not asked): ``offload.transport.ciphers``, told by doctor.
        self.ciphers_offered: str | None = None

    @property
    def control_path(self) -> Path | None:
        if self._shared is not None:
            return self._shared.control
        return None if self._dir is None else self._dir / "m"

    @property
    def known_hosts(self) -> Path | None:
        if self._shared is not None:
            return self._shared.known_hosts
        if self._dir is None or not self.target.public_host_key:
            return None
        return self._dir / "known_hosts"

    def _master_up(self) -> bool:
        """A master to multiplex over: ours running, or the shared one we found."""
        if self._master is not None and self._master.returncode is None:
            return True
        control = self.control_path
        return self._reused and control is not None and master_alive(control) is True

    def _reuse(self, shared: SharedPaths) -> bool:
        """Whether the builder's persistent master is there to use; a dead one's socket is
        removed, so that a master started now can take its place. Where its pinned key
        cannot be written (a full state disk), none is kept: a master of this run's own."""
        try:
            shared.pin()
        except TransportError:
            self._shared = None
            return False
        alive = master_alive(shared.control)
        if alive is False:
            shared.control.unlink(missing_ok=True)
        self._reused = alive is True
        return self._reused

    @property
    def master_pid(self) -> int | None:
        return None if self._master is None else self._master.pid

    def _error(self, what: str, tail: Iterable[str]) -> SshError:
        return ssh_error(self.name, self.target.destination, what, tail)

    async def _ensure_master(self) -> Path:
        async with self._lock:
            if self._master_up() or (self._shared is not None and self._reuse(self._shared)):
                assert self.control_path is not None
                return self.control_path
            await self._stop_master()
            if self._shared is None:
                self._dir = self._dir or private_dir()
                if (pinned := self.known_hosts) is not None:
                    try:
                        pinned.write_text(known_hosts_line(self.target))
                        pinned.chmod(0o600)
                    except OSError as exc:
                        raise pin_error(self.target.destination, pinned, exc) from exc
            control = self.control_path
            assert control is not None
            argv = await self._master_argv(control)
            stack = contextlib.AsyncExitStack()
            self._master_stack = stack
            # The readers of its output are finished after the process is stopped (unwound
            # last): they reach their end once it is gone, not 2 s later each.
            readers = contextlib.AsyncExitStack()
            stack.push_async_callback(readers.aclose)
            proc = await stack.enter_async_context(spawn(argv, env=self._env, grace=2.0))
            self._master = proc
            self._answered = False
            self._spawned.set()
            self._master_tail.clear()
            assert proc.stdout is not None
            assert proc.stderr is not None
            drain = asyncio.get_running_loop().create_task(self._drain(proc.stderr))
            readers.push_async_callback(_finish, drain)
            line = await self._greeting(proc)
            # Read stdout to its end too, so the process's transport closes when it exits.
            rest = asyncio.get_running_loop().create_task(proc.stdout.read())
            readers.push_async_callback(_finish, rest)
            self._answered = bool(line)
            if line == self.dialect.reply:
                self.restricted = True
            elif line.decode(errors="replace").strip() != MASTER_READY:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 2.0)
                    await asyncio.wait_for(asyncio.shield(drain), 2.0)
                error = shell_noise(self.name, self.target.destination, line) or self._error(
                    "connect to", self._master_tail
                )
                await self._stop_master()
                if self._shared is not None:
                    await self._exit_kept(control)
                raise error
            return control

    async def _master_argv(self, control: Path) -> list[str]:
        """The master's command: offering AES-GCM first where both ends have AES and the user
        chose no ciphers (``offload.transport.ciphers``)."""

        def argv(ciphers: str | None) -> list[str]:
            return master_argv(
                self.target,
                control_path=control,
                known_hosts=self.known_hosts,
                nix_sshopts=self._sshopts,
                connect_timeout=self._connect_timeout,
                persist=0 if self._shared is None else PERSIST_SECONDS,
                ciphers=ciphers,
            )

        plain = argv(None)
        offered = await offered_ciphers(plain, self._env) if self.target.aes else None
        self.ciphers_offered = offered
        return plain if offered is None else argv(offered)

    async def _exit_kept(self, control: Path) -> None:
        """End the master a failed start left in the background (with ControlPersist, ssh
        detaches it once logged in, whatever the greeting said): nothing stays behind a
        builder said unreachable, and no later run takes it for a good one."""
        argv = ssh_argv(
            self.target,
            nix_sshopts=self._sshopts,
            control_path=control,
            connect_timeout=KILL_CONNECT_TIMEOUT,
        )
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(
                run_async([*argv[:-2], "-O", "exit", *argv[-2:]], env=self._env, check=False),
                CONTROL_TIMEOUT,
            )

    async def connect_early(self) -> None:
        """Start the master now, ahead of any session; returns once its ssh runs (or failed to
        start), leaving it to connect meanwhile. The first session waits for that connection
        and meets its error, if any: a builder that is down costs one connect timeout, not
        two. Over a master that was there already (kept by an earlier run), the first session
        starts at once (``first_session``)."""
        early = asyncio.get_running_loop().create_task(self._ensure_master())
        self._early = early
        spawned = asyncio.get_running_loop().create_task(self._spawned.wait())
        try:
            await asyncio.wait([early, spawned], return_when=asyncio.FIRST_COMPLETED)
        finally:
            await stop(spawned)
        if early.done() and not early.cancelled() and early.exception() is None:
            control = early.result()
            self._first = await FirstSession.begin(
                lambda stack: self._spawn(stack, control, 0, NO_CLIENT, False),
                self.dialect.hello,
                lambda proc: self._opened(proc, control, hello_sent=True),
            )

    async def _connected(self) -> Path:
        """The master's control socket: the early master's once it is connected, else one
        started (or restarted) now."""
        early = self._early
        if early is not None:
            try:
                return await asyncio.shield(early)
            finally:
                if early.done() and self._early is early:
                    self._early = None
        return await self._ensure_master()

    async def _greeting(self, proc: asyncio.subprocess.Process) -> bytes:
        """The master's first words: our ready line, or a restricted builder's reply."""
        assert proc.stdin is not None
        assert proc.stdout is not None
        with contextlib.suppress(OSError):
            proc.stdin.write(self.dialect.hello)
        reply = self.dialect.reply
        seen = bytearray()  # what was read, said when the read ends early
        try:
            async with asyncio.timeout(self._connect_timeout + _AUTH_SLACK):
                return await first_words(proc.stdout, reply, seen)
        except TimeoutError:
            self._master_tail.append("(no answer within the connect timeout)")
        except asyncio.IncompleteReadError:
            return bytes(seen)
        except (asyncio.LimitOverrunError, ValueError):
            self._master_tail.append("(an endless first line instead of the ready line)")
        return b""

    async def _drain(self, stream: asyncio.StreamReader) -> None:
        # The master's stderr must be read or ssh blocks once the pipe is full.
        while line := await stream.readline():
            self._master_tail.append(line.decode(errors="replace").rstrip())

    async def _stop_master(self) -> None:
        stack, self._master_stack = self._master_stack, None
        proc, self._master = self._master, None
        if stack is None:
            return
        if self._answered and proc is not None and proc.returncode is None and proc.stdin:
            # The master's own remote command ends at EOF on its stdin; with no session left,
            # ssh then exits cleanly (socket removed, totals logged), as on `ssh -O exit` but
            # without starting another ssh. Only a master that does not is signalled (stack).
            # One still in its handshake never reads its stdin: it is signalled at once (it
            # carries no session, and a kept master it detached lives on in its own session).
            proc.stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(proc.wait()), _MASTER_EXIT)
        await stack.aclose()

    async def start(
        self,
        stack: contextlib.AsyncExitStack,
        slots: int = 0,
        *,
        client: str = NO_CLIENT,
        waited: bool = False,
    ) -> SessionPipes:
        """A serve session; with ``slots`` above 0, one holding a builder-side slot for
        ``client`` (its ``pipes.slot`` says which, or ``busy``: then the session has ended
        already; ``waited``: this build was answered busy before, ``ssh.serve_command``)."""
        first, self._first = self._first, None
        if first is not None:
            if (slots, client, waited) == (0, NO_CLIENT, False):
                return await first.take(stack)
            await first.drop()
        control = await self._connected()
        proc = await self._spawn(stack, control, slots, client, waited)
        return await self._opened(proc, control)

    async def _spawn(
        self,
        stack: contextlib.AsyncExitStack,
        control: Path,
        slots: int,
        client: str,
        waited: bool,
    ) -> asyncio.subprocess.Process:
        """A session's ssh, started over the master at ``control`` (``start``)."""
        argv = serve_argv(
            self.target,
            params=self.params,
            known_hosts=self.known_hosts,
            nix_sshopts=self._sshopts,
            control_path=control,
            connect_timeout=self._connect_timeout,
            wrapped=not self.restricted,
            program=self.dialect.program(self.params),
            slots=slots,
            client=client,
            waited=waited,
            cores=self.cores,
        )
        proc = await stack.enter_async_context(spawn(argv, env=self._env))
        stack.push_async_callback(drain_dead, proc)
        return proc

    async def _opened(
        self, proc: asyncio.subprocess.Process, control: Path, *, hello_sent: bool = False
    ) -> SessionPipes:
        """The session ``proc`` begun: its hello sent (unless ``hello_sent``), its reply read."""
        assert proc.stdin is not None
        opening = await open_serve(
            proc, self._connect_timeout + _AUTH_SLACK, self.dialect, hello_sent=hello_sent
        )
        if opening.failure is not None:
            raise self._error("open a session on", [*opening.early, opening.failure])
        self.restricted = self.restricted or opening.restricted
        if opening.load is not None:
            self.cores = opening.load.cores
        return opening.pipes(
            proc,
            over_ssh=True,
            connection_gone=lambda: master_alive(control) is False,
            keepalive=self.keepalive,
        )

    async def run(self, remote: list[str]) -> tuple[int, str, str]:
        """Run a command on the builder over the master; returns (exit code, stdout, stderr).

        Refused on a restricted builder: it would run its one program whatever is asked."""
        control = await self._connected()
        if self.restricted:
            # Not the command itself: offload's own scripts, read as garbage in a build's log.
            raise SshError(
                f"builder '{self.name}' ({self.target.destination}) runs only "
                f"{self.dialect.describe(self.params)} for this key: offload cannot run its own"
                " commands there",
                hint="its authorized_keys line or sshd's ForceCommand restricts the key",
            )
        argv = ssh_argv(
            self.target,
            known_hosts=self.known_hosts,
            nix_sshopts=self._sshopts,
            control_path=control,
            connect_timeout=self._connect_timeout,
        )
        try:
            done = await asyncio.wait_for(
                run_async([*argv, remote_command(remote)], env=self._env, check=False),
                CONTROL_TIMEOUT + KILL_GRACE,
            )
        except TimeoutError:
            # An error of the link's, as every other: a bare TimeoutError (a deletion waiting
            # on a full builder's garbage collector) passed every handler and ended the run.
            raise self._error(f"run `{remote[0]}` on", ["(no answer)"]) from None
        return done.returncode, done.stdout, done.stderr

    async def kill(self, pid: int, born: str | None = None) -> None:
        """Stop ``pid``'s tree over the master; if the master is gone (the connection was lost),
        one direct attempt that gives up after ``KILL_CONNECT_TIMEOUT``: a hung builder must not
        hold anything for a full connect timeout, and its serve process gets a hang-up anyway.
        Never a new master: that would be a connect timeout and more."""
        if self.restricted:
            code, _, err = await self.run(kill_script(pid, KILL_GRACE, born))  # says why not
        else:
            # Over the master while it lives; if it dies meanwhile (a builder that stopped
            # answering), ssh connects directly, for at most the short timeout.
            argv = ssh_argv(
                self.target,
                known_hosts=self.known_hosts,
                nix_sshopts=self._sshopts,
                control_path=self.control_path if self._master_up() else None,
                connect_timeout=KILL_CONNECT_TIMEOUT,
            )
            remote = remote_command(kill_script(pid, KILL_GRACE, born))
            try:
                done = await asyncio.wait_for(
                    run_async([*argv, remote], env=self._env, check=False),
                    CONTROL_TIMEOUT + KILL_GRACE,
                )
            except TimeoutError:
                raise self._error(f"stop process {pid} on", ["(no answer)"]) from None
            code, err = done.returncode, done.stderr
        if code != 0:
            raise self._error(f"stop process {pid} on", [err])

    def release(self) -> None:
        """No session will be started or stopped over the master any more: tell it to end once
        its sessions have (its stdin closed, as ``close`` does), so that it ends while they end
        rather than after them. Nothing while it is still connecting (``close`` stops that)."""
        proc = self._master
        connecting = self._early is not None and not self._early.done()
        if proc is None or connecting or proc.returncode is not None or proc.stdin is None:
            return
        proc.stdin.close()

    async def close(self) -> None:
        early, self._early = self._early, None
        first, self._first = self._first, None
        try:
            if first is not None:
                await first.drop()
            if early is not None:
                # Its failure to connect was for a session to tell: none asked for one.
                with contextlib.suppress(Exception):
                    await stop(early)
            await self._stop_master()
        finally:
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None
