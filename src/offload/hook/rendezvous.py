"""Where a hook process finds its coordinator: the socket's name, the connection, and a
coordinator started when none listens (``offload.hook.client`` for the rest of its life).

The socket's name carries the installation (interpreter, package directory, version) and the
hook protocol's number, so an upgraded offload, or one that speaks to its hooks otherwise,
starts a coordinator of its own while the old one finishes and idles out. A coordinator is
started by the first hook that finds none, under a lock so two hooks never start two, and
says on a pipe when it listens.

A coordinator greets every connection with a byte (``GREETING``) before the hook hands it
anything. One that does not answer (stopped, hung, or too busy to accept) is given
``GREETING_TIMEOUT``: to take the connection (its backlog full, a connect waits that long)
and to greet it; past that the hook decides in its own process, and none of Nix's pipes is
left in flight in that coordinator's socket, which would keep Nix from seeing the hook's end.
A coordinator that greets and then stops before it acknowledges the hello (a window of a few
system calls) still holds that hook until it goes on or ends. One found deaf so is noted
(``<socket>.deaf``): for ``DEAF_FOR`` seconds the next hooks give it ``QUICK_GREETING`` only,
where each waited ``GREETING_TIMEOUT``, 10 s a derivation for as long as it was stopped.

Standard library only, imported lazily where it can be: the hook process runs once per
derivation Nix sends away.
"""

from __future__ import annotations

import _socket  # not `socket`: its import costs more than everything else a hook does
import os
import sys
import time
import zlib

from offload import __version__
from offload.state_location import private_dir

# Not typing's: importing it (and re, enum, functools with it) costs each hook about 3 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess

__all__ = [
    "COORDINATOR_LOG",
    "DEAF_FOR",
    "GREETING",
    "GREETING_TIMEOUT",
    "KEPT_PYTHONPATH",
    "QUICK_GREETING",
    "READY_TIMEOUT",
    "Deaf",
    "coordinator",
    "greeted",
    "log_size",
    "note_deaf",
    "socket_path",
]

# The coordinators' stderr, in the state directory (a coordinator writes there only on faults).
COORDINATOR_LOG = "hook-coordinator.log"
# Unix socket paths are at most 108 bytes on Linux.
_MAX_SOCKET = 100
READY_TIMEOUT = 20.0
# A coordinator's first byte to each connection, and how long a hook waits for it (and for
# its connection to be taken).
GREETING = b"."
GREETING_TIMEOUT = 10.0
# After a hook found the coordinator deaf: for how long, and how long the next ones wait.
DEAF_FOR = 60.0
QUICK_GREETING = 0.5
# The hook protocol's number: in the socket's name, so that a hook never meets a coordinator
# that speaks another (2: the greeting).
_PROTOCOL = 2
# The hook's own PYTHONPATH, for the coordinator to put back (empty: none, as Python reads it).
KEPT_PYTHONPATH = "OFFLOAD_HOOK_PYTHONPATH"


def _digest(text: str) -> str:
    data = text.encode()
    return f"{zlib.crc32(data):08x}{zlib.adler32(data):08x}"


def socket_path(state: str) -> str:
    """The coordinator's socket for ``state``, this installation and this protocol."""
    here = os.path.dirname(os.path.abspath(__file__))  # noqa: PTH100, PTH120 - no pathlib here
    installed = f"{sys.executable}|{here}|{__version__}|{_PROTOCOL}"
    path = f"{state}/hook-{_digest(installed)}.sock"
    if len(os.fsencode(path)) <= _MAX_SOCKET:
        return path
    tmp = os.environ.get("TMPDIR") or "/tmp"  # noqa: S108 - a directory checked to be ours
    short = private_dir(f"{tmp}/offload-hook-{os.getuid()}")
    return f"{short}/{_digest(path)}.sock"


class Deaf(OSError):
    """The coordinator took no connection, or did not greet one, in the time it was given."""


# Set by ``coordinator``: a hook found it deaf less than DEAF_FOR s ago.
_found_deaf = False


def _patience() -> float:
    return min(QUICK_GREETING, GREETING_TIMEOUT) if _found_deaf else GREETING_TIMEOUT


def note_deaf(path: str) -> None:
    """Note that the coordinator at ``path`` was found deaf now, for the next hooks."""
    try:
        fd = os.open(f"{path}.deaf", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        os.close(fd)  # its time of change is the note
    except OSError:
        pass  # they wait the whole time, as before


def _deaf_lately(path: str) -> bool:
    try:
        noted = os.stat(f"{path}.deaf").st_mtime  # noqa: PTH116 - no pathlib in the hook process
    except OSError:
        return False
    return 0 <= time.time() - noted < DEAF_FOR


def _timeval(seconds: float) -> bytes:
    """``struct timeval`` for a socket option (two native longs), without ``struct``."""
    whole = int(seconds)
    return whole.to_bytes(8, sys.byteorder) + int((seconds - whole) * 1e6).to_bytes(
        8, sys.byteorder
    )


def _connect(path: str) -> _socket.socket | None:
    """A connection to the coordinator at ``path``; None where none listens. ``Deaf`` when
    its backlog stays full for ``GREETING_TIMEOUT`` (it takes no connection: stopped, hung)."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    # A connect to a full backlog waits this long (not for ever), then fails with EAGAIN.
    sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDTIMEO, _timeval(_patience()))
    try:
        sock.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    except BlockingIOError:
        from offload.hook.stopped import not_greeting  # only now: a hook's every import costs

        why = not_greeting(sock, _patience(), taken=False)
        sock.close()
        raise Deaf(why) from None
    sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDTIMEO, _timeval(0))
    return sock


def greeted(sock: _socket.socket) -> bool:
    """Whether the coordinator greets us (not: it closed, idle); ``Deaf`` if it says nothing
    within ``GREETING_TIMEOUT`` (its process stopped, hung, or too busy; ``QUICK_GREETING``
    where a hook found it so lately)."""
    sock.settimeout(_patience())
    try:
        return sock.recv(1) == GREETING
    except TimeoutError:
        from offload.hook.stopped import not_greeting  # only now: a hook's every import costs

        raise Deaf(not_greeting(sock, _patience())) from None
    finally:
        sock.settimeout(None)


def log_size(path: str | None) -> int | None:
    """The size of the coordinators' log at ``path`` (0 where it cannot be looked at; None for
    no path): whether a coordinator wrote there is told by its growth."""
    if path is None:
        return None
    try:
        return os.stat(path).st_size  # noqa: PTH116 - no pathlib in the hook process
    except OSError:
        return 0


def _start(state: str, path: str) -> tuple[subprocess.Popen[bytes], int | None]:
    """Start a coordinator and wait until it listens (or has died trying); it, and what its
    log held before."""
    import select
    import subprocess

    ready_read, ready_write = os.pipe()
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
    logged = log_size(f"{state}/{COORDINATOR_LOG}")
    log = os.open(f"{state}/{COORDINATOR_LOG}", flags, 0o600)
    # This process's own import path: nixpkgs' wrapper adds offload and its dependencies from
    # inside the hook's script (site.addsitedir), so the store's bare Python, started with -m,
    # found no module named offload, and every hook decided alone.
    # Its own value is kept for the coordinator to put back: its children (ssh, a ProxyCommand
    # of another Python) must not get this interpreter's path.
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(entry for entry in sys.path if entry),
        KEPT_PYTHONPATH: os.environ.get("PYTHONPATH", ""),
    }
    try:
        started = subprocess.Popen(
            [sys.executable, "-m", "offload.hook.coordinator", state, path, str(ready_write)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            pass_fds=(ready_write,),
            start_new_session=True,  # Nix kills the hook's process group; not the coordinator
        )
    finally:
        os.close(ready_write)
        os.close(log)
    try:
        # One line when it listens; EOF alone when it died first.
        select.select([ready_read], [], [], READY_TIMEOUT)
    finally:
        os.close(ready_read)
    return started, logged


def coordinator(state: str, path: str) -> _socket.socket:
    """A connection to the coordinator at ``path``, started when none listens; OSError with
    why when none can be had (``Deaf``: it did not answer)."""
    global _found_deaf  # noqa: PLW0603 - one hook process, one coordinator it asks
    _found_deaf = _deaf_lately(path)
    sock = _connect(path)
    if sock is not None:
        return sock
    import fcntl

    lock = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sock = _connect(path)  # started by another hook while we waited for the lock
        if sock is None:
            started, logged = _start(state, path)
            sock = _connect(path)
            if sock is None and started.poll() is None:
                # Too slow to listen: stopped before the lock goes, or it would bind later
                # over the socket of the one the next hook starts.
                started.kill()
                started.wait()
    finally:
        os.close(lock)
    if sock is None:
        from offload.hook.stopped import not_started  # only now: a hook's every import costs

        log = f"{state}/{COORDINATOR_LOG}"
        grew = logged is None or (log_size(log) or 0) > logged
        raise OSError(not_started(started, log if grew else None))
    return sock
