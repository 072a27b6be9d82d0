"""The ``offload-hook`` process: hand Nix's pipes to the coordinator and wait for the result.

Nix starts a hook process, writes to it and waits for its reply before it does anything else
(its worker is one thread), and starts a new one after each accepted derivation; so whatever
this process costs, every remotely built derivation costs it in series. It therefore does as
little as it can and imports only the standard library: it connects to the user's coordinator
(``offload.hook.coordinator``) over a Unix socket in the state directory, passes it its stdin,
stderr and fd 4 (``SCM_RIGHTS``) with its arguments, environment and parent's pid, and waits
for one line, the exit code, which it exits with. The coordinator speaks the hook protocol on
those pipes; Nix cannot tell the difference. All but stdin: that one this process keeps and
forwards (``_forward``) into a pipe it hands over in its place, keeping a copy of each byte
until it is answered, because a byte the coordinator read is gone from the pipe: one that
died between reading Nix's try and saying so took the try with it, and Nix waited for a reply
to it for ever. Before the exit code the coordinator tells this process each turn of that
talk (a try read, a reply about to be written and written, an accept about to be), a byte
each, and where the settings preamble ends (``SETTINGS``). This process reads Nix's stdin only
while Nix waits for nothing (before a try is read, not until its reply is told written), and
what the coordinator told first: so a reply told written answers every byte after the
settings forwarded until then. When the coordinator dies before an accept (killed, crashed),
this process starts a new one and hands it the pipes with what Nix said that no reply has
answered yet: the settings, and the try Nix waits on, if any (``RESUME_MAGIC``). The new
coordinator decides that derivation again: with ``-j 0`` Nix has no other way to build it.
This is done once per hook process. When it cannot be (the death came with a reply half
written, a second time, or no coordinator starts), the hook does what it did before
(``offload.hook.stopped``): when Nix waits for a reply it answers ``# postpone`` (Nix asks
again, finds this hook gone and builds the derivation itself), between tries it says why it
ends, and after an accept it says so as Nix reads a hook's lines then (the build failed).
Before a reply or a reason, it closes the pipe Nix writes its tries to, so that Nix's next try
finds the hook gone (EPIPE), even while this process is still ending.

A coordinator is found, or started on demand, as ``offload.hook.rendezvous`` says; it greets
every connection before the hook hands anything over (one that does not, in time, is said, and
the hook decides in this process), and acknowledges every hook it takes with one more byte, so
a hook that reached a coordinator just as it shut down (idle) can tell and try again. If this
process is killed (SIGTERM, or SIGKILL to its process group), its socket closes and the
coordinator stops the build it ran for it. When no coordinator can be had at all, the hook is
served in this process (``offload.hook.serve.in_process``), as slowly as before, rather than
not at all. Started by a person instead (``--help``, or a terminal on stdin), it answers them
(``offload.hook.usage``) and serves nothing.
"""

from __future__ import annotations

import _socket  # not `socket`: its import costs more than everything else this process does
import os
import stat
import sys
from collections.abc import Callable

from offload.hook.nix_path import nix_beside_parent
from offload.hook.rendezvous import (
    COORDINATOR_LOG,
    Deaf,
    coordinator,
    greeted,
    log_size,
    note_deaf,
    socket_path,
)
from offload.numerals import is_decimal
from offload.state_location import HOOK_STATE_NOTE, usable_hook_state

__all__ = [
    "ACCEPTED",
    "ANSWERED",
    "ASKED",
    "HELLO_FDS",
    "HELLO_MAGIC",
    "REPLYING",
    "RESUME_MAGIC",
    "SETTINGS",
    "encode_hello",
    "from_nix",
    "main",
    "say_to_nix",
    "send_hello",
]

_ATTEMPTS = 3
# The pipes Nix gives a hook: requests on stdin, replies on stderr, the build log on fd 4.
HELLO_FDS = (0, 2, 4)
HELLO_MAGIC = b"offload-hello-1"
# The hello of a hook whose coordinator died: followed by a 4-byte length and that many bytes
# (``handover.receive_hello``), what Nix said that the new coordinator reads first.
RESUME_MAGIC = b"offload-resume-1"
# What the coordinator says of Nix's turn (``wire.Turn``), a byte each, before the exit code:
ASKED = b"w"  # a try was read: Nix waits for a reply
REPLYING = b"r"  # a decline or postpone is being written: whether Nix has it is not known
ANSWERED = b"n"  # declined or postponed (written): Nix waits for nothing until its next try
ACCEPTED = b"a"  # about to write "# accept": Nix waits for the build's end
_TURN_BYTES = ASKED + REPLYING + ANSWERED + ACCEPTED
# And the settings preamble's length in Nix's stdin (4 bytes) once it has been read.
SETTINGS = b"s"


def encode_hello(
    argv: list[str], env: dict[str, str], parent: int, fds: list[int], *, resume: bool = False
) -> bytes:
    """The hello's body (see ``offload.hook.handover``): NUL-separated fields, since no
    argument, name or value of an environment can hold a NUL. ``resume``: what Nix said follows
    it (``RESUME_MAGIC``)."""
    magic = RESUME_MAGIC if resume else HELLO_MAGIC
    fields = [magic, b"%d" % parent, ",".join(map(str, fds)).encode(), b"%d" % len(argv)]
    fields += [os.fsencode(arg) for arg in argv]
    fields += [os.fsencode(f"{name}={value}") for name, value in env.items()]
    return b"\0".join(fields)


def send_hello(
    sock: _socket.socket,
    pipes: dict[int, int],
    argv: list[str],
    env: dict[str, str],
    parent: int,
    *,
    resume: bytes | None = None,
) -> None:
    """The hello: ``pipes`` maps our fd numbers (0, 2, 4) to the descriptors to pass;
    ``resume``, what Nix said that a new coordinator reads before Nix's pipe."""
    body = encode_hello(argv, env, parent, list(pipes), resume=resume is not None)
    rights = b"".join(fd.to_bytes(4, sys.byteorder) for fd in pipes.values())
    head = len(body).to_bytes(4, "big")
    sock.sendmsg([head], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])
    sock.sendall(body)
    if resume is not None:
        sock.sendall(len(resume).to_bytes(4, "big") + resume)


def _hand_over(sock: _socket.socket, env: dict[str, str], resume: bytes | None) -> int | None:
    """Pass our pipes and context: the write end of the pipe handed over for stdin once the
    coordinator has taken them, else None (ConnectionError: it went away meanwhile)."""
    if not greeted(sock):
        return None
    pipes = {fd: fd for fd in HELLO_FDS if _is_open(fd)}
    forward = None
    if 0 in pipes:
        pipes[0], forward = os.pipe()
    try:
        send_hello(sock, pipes, sys.argv, env, os.getppid(), resume=resume)
        taken = sock.recv(1) == b"+"
    except BaseException:
        if forward is not None:
            os.close(forward)
        raise
    finally:
        if forward is not None:
            os.close(pipes[0])
    if not taken:
        if forward is not None:
            os.close(forward)
        return None
    return -1 if forward is None else forward


class _Heard:
    """What the coordinator told of its talk with Nix, the last turn, and what Nix said that
    no reply has answered yet (the settings preamble first, kept throughout); ``said``, what a
    coordinator was handed before Nix's pipe."""

    def __init__(self, said: bytes = b"") -> None:
        self.turn = b""
        self.unanswered = bytearray(said)
        self.settings: int | None = None  # the preamble's length, once it was read
        self.lost = False  # bytes were dropped that a new coordinator would need

    @property
    def nix_may_send(self) -> bool:
        """Nix waits for no reply: what it writes now is a new try (or an accepted build's)."""
        return self.turn not in {ASKED, REPLYING}

    def forwarded(self, data: bytes) -> None:
        if self.turn != ACCEPTED:  # after an accept, nothing is handed to another coordinator
            self.unanswered += data

    @property
    def try_pending(self) -> bool:
        """Nix sent a try that no reply answered."""
        return len(self.unanswered) > (self.settings or 0)

    def take(self, data: bytes) -> tuple[bytes, int | None]:
        """Take the whole records at the start of ``data``: the rest (a record cut short) and
        the exit code once it came."""
        while data:
            kind = data[:1]
            if kind in _TURN_BYTES:
                self._turn(kind)
                data = data[1:]
            elif kind == SETTINGS:
                if len(data) < 5:
                    break
                self.settings, data = int.from_bytes(data[1:5], "big"), data[5:]
            elif data.endswith(b"\n"):
                return b"", int(data)
            else:
                break
        return data, None

    def _turn(self, turn: bytes) -> None:
        self.turn = turn
        if turn == ANSWERED:  # every try read so far is answered; the next is not read yet
            if self.settings is None:
                self.lost = True
            else:
                del self.unanswered[self.settings :]

    def resume(self) -> bytes | None:
        """What a new coordinator must read before Nix's pipe; None when it cannot take over
        (a reply may be half written, or Nix waits for the build an accept began)."""
        if self.lost or self.turn in {REPLYING, ACCEPTED}:
            return None
        return bytes(self.unanswered)


def _started_by_nix() -> bool:
    """Nix gives a hook pipes; a hook run by hand (stdin a file or a terminal) is served here."""
    try:
        return all(stat.S_ISFIFO(os.fstat(fd).st_mode) for fd in (0, 2))
    except OSError:
        return False


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def served(
    sock: _socket.socket,
    env: dict[str, str] | None = None,
    *,
    successor: Callable[[], _socket.socket] | None = None,
    resume: bytes | None = None,
    log: str | None = None,
) -> int | None:
    """The exit code once the coordinator has served us; None when it closed before taking
    our pipes (it idled out as we reached it, its backlog reset): ask again. Once it has
    taken them, only it may answer Nix: should it die, ``successor`` gives a new one to take
    over (with ``resume``, what Nix said before), else its failure is ours. ``log``, the
    coordinators' log: whether it died with a word there is said. OSError when it does not
    greet us in time (``rendezvous.greeted``): the hook then decides alone."""
    env = dict(os.environ) if env is None else env
    logged = log_size(log)  # what its log held before it served us
    try:
        forward = _hand_over(sock, env, resume)
    except ConnectionError:
        return None
    if forward is None:
        return None
    heard = _Heard(resume or b"")
    code = _wait_for_code(sock, heard, forward)
    if code is not None:
        return code
    # Only now: a hook's every import costs.
    from offload.hook.stopped import say_stopped, say_taken_over, why_stopped

    why = why_stopped(sock, logged, log_size(log))
    replay = heard.resume()
    if successor is not None and replay is not None:
        say_taken_over(why)
        try:
            code = _take_over(successor, env, replay, log)
        except OSError as exc:  # none could be started: how that one ended too
            why = f"{why}, and none took over ({exc})"
            code = None
        if code is not None:
            return code
    say_stopped(heard.turn, try_pending=heard.try_pending, why=why)
    return 1


def _wait_for_code(sock: _socket.socket, heard: _Heard, forward: int) -> int | None:
    """The exit code; None if the coordinator died first (``heard`` says how far it got).
    Meanwhile Nix's stdin goes to ``forward`` (-1: there is none), read only once what the
    coordinator told is (``_forward``); closed at its end, as Nix's own was seen closed."""
    import select

    data = b""
    try:
        while True:
            data, code = heard.take(data)
            if code is not None:
                return code
            watched = [sock.fileno()]
            if forward >= 0 and heard.nix_may_send:
                watched.append(0)
            ready = select.select(watched, [], [])[0]
            if sock.fileno() in ready:  # first: a reply Nix read was told before it was written
                try:
                    chunk = sock.recv(1 << 16)
                except ConnectionError:
                    chunk = b""
                if not chunk:
                    return None
                data += chunk
            elif forward >= 0 and not _forward(heard, forward):
                os.close(forward)
                forward = -1
    finally:
        if forward >= 0:
            os.close(forward)


def _forward(heard: _Heard, forward: int) -> bool:
    """Pass on what Nix wrote to our stdin, kept until answered; False at its end."""
    try:
        chunk = os.read(0, 1 << 16)
    except OSError:
        chunk = b""
    if not chunk:
        return False
    heard.forwarded(chunk)
    view = memoryview(chunk)
    try:
        while view:
            view = view[os.write(forward, view) :]
    except OSError:
        pass  # the coordinator is gone: what it did not read is kept for the next one
    return True


def _take_over(
    successor: Callable[[], _socket.socket], env: dict[str, str], replay: bytes, log: str | None
) -> int | None:
    """The exit code once a new coordinator has served the rest; None if none took over
    (OSError: none could be had, ``rendezvous.coordinator``'s words)."""
    # The dead one's socket may still take a connection as its process ends: asked again.
    for _ in range(_ATTEMPTS):
        sock = successor()
        try:
            if (code := served(sock, env, resume=replay, log=log)) is not None:
                return code
        finally:
            sock.close()
    return None


def main() -> int:
    """The hook; Nix ends hooks with SIGKILL or SIGTERM, and an explicit SIGINT ends it too."""
    try:
        return _main()
    except KeyboardInterrupt:
        return 130


def from_nix(argv: list[str]) -> bool:
    """``argv`` ends as Nix's ends: with the verbosity, a number (0 to 7)."""
    return len(argv) > 1 and is_decimal(argv[-1]) and len(argv[-1]) < 3


def say_to_nix(message: str, level: int) -> None:
    """``message`` as a structured line (``@nix``, at Nix's verbosity ``level``: 0 an error, 1
    a warning), which Nix shows whatever the hook's turn, and passes on to its client (a
    nix-daemon's: the user's terminal, not the daemon's journal, where it puts a plain line
    written before the reply; after an accept, it drops one)."""
    import json  # only now: a hook's every import costs

    line = json.dumps({"action": "msg", "level": level, "msg": message}, separators=(",", ":"))
    sys.stderr.write(f"@nix {line}\n")


def _main() -> int:
    terminal = os.isatty(0)
    if terminal or not from_nix(sys.argv):  # maybe a person: --help, or no Nix at all
        from offload.hook.usage import answer

        code = answer(sys.argv, terminal=terminal)
        if code is not None:
            return code
    nix_beside_parent()  # before the environment is handed on: a nix-daemon's has no Nix
    if os.environ.get("OFFLOAD_HOOK_COORDINATOR") != "0" and _started_by_nix():
        try:
            state, note = usable_hook_state()
            env = dict(os.environ)
            if note is not None:  # the coordinator says it, once per nix-build
                env[HOOK_STATE_NOTE] = note
            path = socket_path(state)
            for _ in range(_ATTEMPTS):
                sock = coordinator(state, path)
                try:
                    again = lambda: coordinator(state, path)  # noqa: E731 - one use
                    log = f"{state}/{COORDINATOR_LOG}"
                    if (code := served(sock, env, successor=again, log=log)) is not None:
                        return code
                finally:
                    sock.close()
        except OSError as exc:
            if isinstance(exc, Deaf):
                note_deaf(path)
            say_to_nix(
                f"offload-hook: warning: no coordinator ({exc}); deciding in this process", 1
            )
    from offload.hook.serve import in_process

    return in_process()
