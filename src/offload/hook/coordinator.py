"""The coordinator: one long-lived process that serves every hook of a user (or of the daemon).

Started on demand by the first ``offload-hook`` that finds none (``offload.hook.client``), it
listens on a Unix socket in the state directory (mode 0600 in a 0700 directory, and a peer of
another uid is refused). Each hook process connects, passes Nix's pipes, its arguments,
environment and parent's pid, and is served by ``offload.hook.serve`` exactly as it would be in
its own process; when that ends, the pipes are closed and the exit code sent back. What the
coordinator adds is what outlives one hook: the serve sessions to the builders
(``offload.hook.links``), so an accept costs no ssh round trip and no remote ``nix-store``
start, and the interpreter with offload imported, so a derivation costs a hook process start
of a few tens of milliseconds, not half a second. Decisions still come from the shared files
(slot locks, backoff, history), so hooks of other installations, Nix's own hook and
``offload build`` runs are all seen.

Writes to Nix's pipes never block the coordinator: each goes through an asyncio pipe transport
that buffers, because Nix's single-threaded worker may be waiting for another hook's reply
while this one's log pipe is full. A hook process that goes away (Nix kills it: its socket
closes) has its build cancelled, which stops the remote process and removes partial outputs.
Each hook process is told what it needs to have a new coordinator take over should this one die
before an accept (``_Told``; ``offload.hook.client``, which forwards Nix's stdin and keeps it),
and a hook that resumes so is served as any other, its reader given first what Nix said to the
one that died.
After ``IDLE_SECONDS`` with no hook (``$OFFLOAD_HOOK_IDLE`` in the environment of the hook that
started it overrides them), the coordinator closes its sessions and exits; SIGTERM
does the same at once, cancelling builds under way. Its pid is in ``<state>/<socket>.pid``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import resource
import signal
import socket
import sys
import time
from pathlib import Path

from offload.hook.client import ACCEPTED, ANSWERED, ASKED, REPLYING, SETTINGS
from offload.hook.coordinator_log import configure, note
from offload.hook.handover import Channels, Hello, open_channels, peer_is_us, receive_hello
from offload.hook.home import sweep_leftovers
from offload.hook.keep import Keep
from offload.hook.rendezvous import GREETING, KEPT_PYTHONPATH
from offload.hook.serve import Hook, serve
from offload.hook.wire import Turn
from offload.procfs import running

__all__ = ["IDLE_SECONDS", "IDLE_VARIABLE", "Coordinator", "main", "stop_coordinators"]

IDLE_SECONDS = 120.0  # as long as the ssh masters persist (offload.transport.shared)
# How long a hook that cannot be taken (no descriptor left) waits in the backlog per try.
_ACCEPT_PAUSE = 0.1
_DESCRIPTORS = 1 << 16
IDLE_VARIABLE = (
    "OFFLOAD_HOOK_IDLE"  # seconds, to override it (the tests' coordinators idle out fast)
)


class Coordinator:
    def __init__(self, state: Path, path: Path, idle: float = IDLE_SECONDS) -> None:
        self.state = state
        self.path = path
        self.idle = idle
        self.keep = Keep(state, queue=True)
        self._served: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._server: socket.socket | None = None
        self._bound = 0  # the socket file's inode, once bound
        # In the state directory even when the socket had to go elsewhere (a long path).
        self.pid_file = state / f"{path.name}.pid"

    async def run(self, ready_fd: int | None) -> None:
        loop = asyncio.get_running_loop()
        self._server = self._listen()
        self.pid_file.write_text(f"{os.getpid()}\n")
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._signalled, signum)
        if ready_fd is not None:
            try:
                os.write(ready_fd, b"ready\n")
            except BrokenPipeError:  # the hook that started us gave up (Ctrl-C): it kills us
                self._stop.set()
            finally:
                os.close(ready_fd)
        # In a thread: a large store's scan must not keep the first hooks from their greeting.
        sweeping = asyncio.create_task(asyncio.to_thread(sweep_leftovers))
        accepting = asyncio.create_task(self._accept(self._server))
        self._arm_idle()
        try:
            await self._stop.wait()
        finally:
            self._close_server()
            accepting.cancel()
            for task in list(self._served):
                task.cancel()
            await asyncio.wait([accepting, sweeping, *self._served])
            await self.keep.aclose()
            self._forget_pid()

    def _forget_pid(self) -> None:
        """The pid file goes, unless a successor (started while this one closed) wrote its own."""
        with contextlib.suppress(OSError, ValueError):
            if int(self.pid_file.read_text()) == os.getpid():
                self.pid_file.unlink()

    def _signalled(self, signum: int) -> None:
        if self._served:  # the hooks it leaves say it stopped, and point at this log
            name = signal.Signals(signum).name
            served = len(self._served)
            hooks = "1 hook" if served == 1 else f"{served} hooks"
            note(f"stopped by {name} with {hooks} served")
        self._stop.set()

    def _listen(self) -> socket.socket:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # A socket left by a coordinator that died: the hook that started us holds the start
        # lock, so no live coordinator owns this path.
        self.path.unlink(missing_ok=True)
        old = os.umask(0o177)
        try:
            server.bind(str(self.path))
        finally:
            os.umask(old)
        self._bound = self.path.stat().st_ino
        server.listen(64)
        server.setblocking(False)
        return server

    def _close_server(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        with contextlib.suppress(OSError):
            if self.path.stat().st_ino == self._bound:  # not a successor's socket
                self.path.unlink()
        server.close()

    async def _accept(self, server: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        failing = False
        while True:
            try:
                conn, _ = await loop.sock_accept(server)
            except OSError as exc:
                # Out of descriptors (EMFILE, ENFILE) or memory: one failure ended the loop,
                # and every hook after it waited for good. It waits in the backlog until a
                # build ends and frees some, for up to its greeting's timeout; then it decides
                # alone (``rendezvous``).
                if not failing:
                    note(f"cannot take a hook now ({exc.strerror or exc}); trying again")
                failing = True
                await asyncio.sleep(_ACCEPT_PAUSE)
                continue
            failing = False
            task = asyncio.create_task(self._connection(conn))
            self._served.add(task)
            self._disarm_idle()
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._served.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            note(f"a hook failed: {type(exc).__name__}: {exc}")
        if not self._served:
            self._arm_idle()

    def _arm_idle(self) -> None:
        self._disarm_idle()
        self._idle_timer = asyncio.get_running_loop().call_later(self.idle, self._idle_out)

    def _disarm_idle(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _idle_out(self) -> None:
        """Stop listening under the start lock, so a hook arriving now starts a new coordinator
        rather than finding a socket nobody will answer."""
        if self._served:
            return
        try:
            lock = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:  # the state directory is gone: nobody can find us anyway
            self._close_server()
            self._stop.set()
            return
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._arm_idle()  # a hook is starting one right now; look again later
                return
            self._close_server()
        finally:
            os.close(lock)
        self._stop.set()

    async def _connection(self, conn: socket.socket) -> None:
        with conn:
            conn.setblocking(False)
            if not peer_is_us(conn):  # only the user's own hooks are greeted, or heard
                return
            try:
                # Before the hook hands its pipes over: one not greeted in time decides alone,
                # and none of Nix's pipes is left in flight in a socket of this process.
                await asyncio.get_running_loop().sock_sendall(conn, GREETING)
            except (BrokenPipeError, ConnectionResetError):
                return  # it gave up waiting (this process was stopped): it decided alone
            hello = await receive_hello(conn)
            if hello is None:
                return
            try:
                # Before the pipes are read: from then on, turns are told (``_Told``).
                await asyncio.get_running_loop().sock_sendall(conn, b"+")
            except OSError as exc:
                for fd in hello.fds.values():
                    os.close(fd)
                if isinstance(exc, BrokenPipeError | ConnectionResetError):
                    # The hook is gone already (Nix killed it as it stopped): nothing to
                    # serve, and no failure for the log.
                    return
                raise
            told = _Told(conn)
            channels = await open_channels(hello.fds, replay=hello.replay or b"")
            channels.io.on_turn = told.turn
            channels.io.on_settings = told.settings
            try:
                code = await self._serve(conn, hello, channels)
            finally:
                await channels.aclose()
            if code is not None:
                # Nix closes a hook's stdin and kills it once done with it (after a
                # decline-permanently, at the end of a build): a hook already gone needs no
                # exit code, and is no failure to log.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    await asyncio.get_running_loop().sock_sendall(conn, f"{code}\n".encode())

    async def _serve(self, conn: socket.socket, hello: Hello, channels: Channels) -> int | None:
        """The hook's exit code, or None if its process went away first."""
        hook = Hook(channels.reader, channels.io, hello.argv, hello.env, hello.parent)
        serving = asyncio.create_task(serve(hook, self.keep, guarded=False))
        gone = asyncio.create_task(asyncio.get_running_loop().sock_recv(conn, 1))
        try:
            await asyncio.wait([serving, gone], return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Also when this is cancelled (SIGTERM): a build left running here would outlive
            # its pipes and, once ``aclose`` stopped its session, take the builder's
            # "interrupted by the user" for a failure of the builder's, backing it off; and
            # the receive left waiting would keep the loop watching ``conn``'s descriptor
            # number after ``conn`` is closed, so that the next pipe given that number (the
            # remote kill's) was never watched, and the stop waited for its 15 s timeout.
            stopped = not serving.done()
            for task in (serving, gone):
                task.cancel()  # a build: stops it there, removes partial outputs, frees its slot
            await asyncio.wait([serving, gone])
        if stopped:
            return None
        return channels.result(serving)


_TURNS = {
    Turn.ASKED: ASKED,
    Turn.REPLYING: REPLYING,
    Turn.ANSWERED: ANSWERED,
    Turn.ACCEPTED: ACCEPTED,
}


class _Told:
    """What the hook process is told (``offload.hook.client``), so that should this coordinator
    die it can have a new one take over, or answer for it: each turn, and the settings
    preamble's length. Sent at once, whole: the hook reads them as they come, and nothing else
    is sent on the socket before the exit code. A send that fails (the hook gone) ends them."""

    def __init__(self, conn: socket.socket) -> None:
        self._conn = conn
        self._broken = False

    def turn(self, turn: Turn) -> None:
        self._send(_TURNS[turn])

    def settings(self, size: int) -> None:
        self._send(SETTINGS + size.to_bytes(4, "big"))

    def _send(self, data: bytes) -> None:
        if self._broken:
            return
        try:
            self._conn.sendall(data)
        except OSError:
            self._broken = True


def stop_coordinators(state: Path, timeout: float = 30.0) -> list[int]:
    """SIGTERM every coordinator serving ``state`` and wait (up to ``timeout`` s each) until it
    has exited, its sessions closed; the pids that were stopped. A coordinator is a daemon,
    reaped by init: exited is enough, not reaped (``procfs.running``). A pid file outlives a
    coordinator that was killed, and its pid may since be another process's: only a process
    whose command line is a coordinator's of ``state`` is signalled."""
    stopped = []
    for pid_file in state.glob("*.sock.pid"):
        try:
            pid = int(pid_file.read_text())
            if not _serves(pid, state):
                continue
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            continue
        deadline = time.monotonic() + timeout
        while running(pid) and time.monotonic() < deadline:
            time.sleep(0.02)  # not our child: nothing to wait on but its /proc entry
        stopped.append(pid)
    return stopped


def _serves(pid: int, state: Path) -> bool:
    """Whether ``pid`` runs as a coordinator of ``state`` (``client``'s argv for it: the
    interpreter, ``-m offload.hook.coordinator``, the state directory, ...)."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    if argv[1:3] != [b"-m", b"offload.hook.coordinator"] or len(argv) < 4:
        return False
    return Path(os.fsdecode(argv[3])).samefile(state)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        sys.stderr.write("usage: python -m offload.hook.coordinator STATE SOCKET READY_FD\n")
        return 2
    state, path, ready = Path(args[0]), Path(args[1]), int(args[2])
    configure()
    _own_pythonpath()
    _more_descriptors()
    if sys.version_info < (3, 12):
        # 3.11's default watches each child from a thread of its own; every build starts a few
        # processes, and pidfds (which 3.12 uses by itself) cost the event loop nothing.
        asyncio.set_child_watcher(asyncio.PidfdChildWatcher())
    idle = IDLE_SECONDS
    with contextlib.suppress(ValueError):
        idle = max(0.0, float(os.environ.get(IDLE_VARIABLE, IDLE_SECONDS)))
    asyncio.run(Coordinator(state, path, idle).run(ready))
    return 0


def _own_pythonpath() -> None:
    """The environment without the import path the hook gave this process (``rendezvous._start``),
    so that what it starts gets the hook's own: a ProxyCommand of another Python read this
    interpreter's standard library."""
    kept = os.environ.pop(KEPT_PYTHONPATH, None)
    if kept is None:
        return
    if not kept:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = kept


def _more_descriptors() -> None:
    """More open files, up to ``_DESCRIPTORS`` and this user's hard limit: the coordinator
    inherits the first hook's soft limit (often 1024 under a nix-build) and holds a few per
    hook served, more per build."""
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        # Bounded: what it starts inherits it, and a program may close every descriptor below.
        wanted = _DESCRIPTORS if hard == resource.RLIM_INFINITY else min(hard, _DESCRIPTORS)
        if wanted > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


if __name__ == "__main__":
    sys.exit(main())
