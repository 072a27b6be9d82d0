"""What a hook process (``offload.hook.client``) says and does when its coordinator dies under
it, imported only then: every import costs each derivation Nix sends away.

Once the coordinator accepted, Nix shows only ``@nix`` messages from the hook
(``client.say_to_nix``). Otherwise a plain line, which Nix shows when it next writes to the
hook and finds it gone, as "build hook died unexpectedly: <what the hook left>" (a JSON message
there was shown raw). While Nix waits for a reply, the hook answers ``# postpone`` first: a
hook that ends then fails the whole nix-build ("unexpected EOF reading a line"). Nix asks again
after a postpone, finds this hook gone (EPIPE), shows the line that follows the postpone,
builds the derivation itself and starts a new hook for the next: one derivation built here. A
decline would cost two (this one, and the next, which finds the hook gone).
"""

from __future__ import annotations

import _socket
import os
import select
import subprocess
import sys
import time

from offload.hook.client import ACCEPTED, ANSWERED, say_to_nix
from offload.hook.rendezvous import COORDINATOR_LOG, READY_TIMEOUT

__all__ = ["not_greeting", "not_started", "say_stopped", "say_taken_over", "why_stopped"]

_POSTPONE = "# postpone\n"
# How long a coordinator this hook started, its socket closed, may take to end.
_ENDING = 1.0


def why_stopped(sock: _socket.socket, logged: int | None, logs: int | None) -> str:
    """What is known of the coordinator's end, as words in brackets: how it ended (known only
    to the hook that started it: its parent), and its log, named only where it wrote there
    while it served this hook (``logged`` bytes then, ``logs`` now; None: not known). One
    killed by SIGKILL (the out-of-memory killer, ``kill -9``) writes nothing, and a pointer to
    an empty file sent the user looking for nothing."""
    pid = _peer(sock)
    ours, status = (False, None) if pid is None else _status(pid)
    said: list[str] = []
    if status is not None and os.WIFSIGNALED(status):
        said.append(f"killed by {_signal_name(os.WTERMSIG(status))}")
    elif status is not None:
        said.append(f"exit status {os.WEXITSTATUS(status)}")
    if logged is None or logs is None or logs > logged:
        said.append(f"its log: {COORDINATOR_LOG} in the state directory")
    elif status is None:  # SIGTERM too: one stopped so says nothing either
        said.append(
            "it left no word in its log: killed by a signal?"
            + (
                " (not ended 1 s after it closed this hook's socket)"
                if ours
                else " (another hook started it: how it ended is not known here)"
            )
        )
    else:
        said.append("it left no word in its log")
    who = "" if pid is None else f"pid {pid}, "
    return f"({who}{'; '.join(said)})"


def not_started(started: subprocess.Popen[bytes], log: str | None) -> str:
    """Why the coordinator this hook ``started`` does not listen: how it ended, if it did
    (within ``_ENDING``: its ready pipe is closed as it exits), and ``log``, the file it wrote
    to meanwhile (None: it wrote nothing)."""
    try:
        code = started.wait(_ENDING)
    except subprocess.TimeoutExpired:
        code = None
    who = f"the coordinator, pid {started.pid},"
    if code is None:
        said = f"{who} did not listen within {READY_TIMEOUT:g} s"
    elif code < 0:
        said = f"{who} was killed by {_signal_name(-code)} before it listened"
    else:
        said = f"{who} exited with status {code} before it listened"
    return said + (f"; see {log}" if log is not None else "; it left no word in its log")


def say_taken_over(why: str) -> None:
    """Tell the user a new coordinator takes the dead one's place. A plain line: said before
    the take-over is tried, and where none takes over the hook ends, and Nix shows what it left
    as "build hook died unexpectedly: ..." (a structured line there was shown raw)."""
    sys.stderr.write(
        f"offload-hook: warning: the coordinator stopped {why}; a new one decides in its place\n"
    )
    sys.stderr.flush()


def say_stopped(turn: bytes, *, try_pending: bool, why: str) -> None:
    """Say the coordinator died (``why``: ``why_stopped``), after ``turn`` (none yet: Nix sends
    a try with the settings, so it waits for a reply; ``try_pending``: Nix sent one no reply
    answered); and answer for it when Nix waits for one."""
    stopped = f"offload-hook: error: the coordinator stopped before the hook ended {why}"
    if turn == ACCEPTED:
        say_to_nix(stopped, 0)
        return
    waits = turn != ANSWERED or try_pending or _request_unread()
    _refuse_requests()
    sys.stderr.write((_POSTPONE if waits else "") + stopped + "\n")


def not_greeting(sock: _socket.socket, waited: float, *, taken: bool = True) -> str:
    """Why this hook decides alone: the coordinator at ``sock``'s other end (its pid, where
    known) said nothing for ``waited`` seconds, or (``taken`` False) took no connection for
    as long (its backlog full)."""
    pid = _peer(sock)
    who = "the coordinator" if pid is None else f"the coordinator, pid {pid},"
    what = "did not answer" if taken else "took no connection"
    return (
        f"{who} {what} within {waited:g} s (stopped, hung or busy: its log is {COORDINATOR_LOG}"
        " in the state directory)"
    )


def _peer(sock: _socket.socket) -> int | None:
    """The pid of the process at the socket's other end (the coordinator that listens)."""
    try:
        creds = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    except OSError:
        return None
    return int.from_bytes(creds[:4], sys.byteorder) or None


def _status(pid: int) -> tuple[bool, int | None]:
    """Whether this process started ``pid``, and its wait status if so and it ended (it
    closed our socket as it ends: waited for ``_ENDING`` at most; a process traced by another,
    as strace, is reapable by its parent only once its tracer let it go); else None."""
    try:
        ended, status = os.waitpid(pid, os.WNOHANG)
        if ended:
            return True, status
    except ChildProcessError:  # not our child (another hook started it), or reaped
        return False, None
    except OSError:
        return True, None
    try:
        ended, status = _wait_ended(pid)
    except OSError:
        return True, None
    return True, (status if ended else None)


def _wait_ended(pid: int) -> tuple[int, int]:
    """``waitpid``'s answer for our child ``pid`` once it ended, or ``_ENDING`` s from now."""
    try:
        ending = os.pidfd_open(pid)  # readable once it ended (Linux 5.3)
    except OSError:  # an older kernel, or a seccomp filter that refuses it: asked every 10 ms
        deadline = time.monotonic() + _ENDING
        while not (answer := os.waitpid(pid, os.WNOHANG))[0] and time.monotonic() < deadline:
            time.sleep(0.01)
        return answer
    try:
        select.select([ending], [], [], _ENDING)
        return os.waitpid(pid, os.WNOHANG)
    finally:
        os.close(ending)


def _signal_name(number: int) -> str:
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _refuse_requests() -> None:
    """Close the pipe Nix writes its tries to (this process holds its last read end), before
    anything is said: Nix, reading the postpone, may write its next try (another derivation's)
    at once, while this process still runs; written into an open pipe, Nix would wait for a
    reply and meet EOF ("unexpected EOF reading a line": the nix-build fails), where EPIPE is
    a hook gone, which it survives (it builds that derivation itself)."""
    try:
        null = os.open(os.devnull, os.O_RDONLY)
    except OSError:
        os.close(0)
        return
    os.dup2(null, 0)  # rather than a bare close: fd 0 stays taken, as the interpreter expects
    os.close(null)


def _request_unread() -> bool:
    """Nix wrote a try the coordinator never read (its turn was not told): it waits."""
    try:
        return bool(select.select([0], [], [], 0)[0]) and os.read(0, 1) != b""
    except OSError:
        return False
