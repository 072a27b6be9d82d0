"""Which protocol a builder is spoken to in: serve for ``ssh://``, the daemon's for ``ssh-ng://``.

The model: a ``Dialect`` is everything the transport needs to know about a protocol without
speaking it: the remote program to start (as Nix's own ssh:// and ssh-ng:// stores start it,
``remote-program`` and ``remote-store`` included), the client's first bytes (written as soon as
a session starts, before anything is known about the other end) and the first bytes of the
program's answer (which tell a builder whose key runs only that program, one that ignores
offload's wrapper, from a normal one), and how to make and handshake a client on the session.

A key forced to the other protocol's program (``nix-store --serve`` for an ``ssh-ng://`` line,
``nix-daemon --stdio`` for an ``ssh://`` one) reads the hello as a wrong magic number and says
only "protocol mismatch" (``MISMATCH``), Nix's words for both; a ``nix-daemon --stdio`` that
only relays to the builder's daemon (a user that is not root, Nix before 2.20; from 2.20 it
answers itself) says "unexpected EOF from daemon socket" instead, as the daemon hangs up on
serve's hello (``mismatched``). ``mismatch_fix``
says what it is and the fix, in doctor's words and ``offload build``'s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from offload.forced import FORCED
from offload.protocol.client import CLIENT_HELLO, SERVER_HELLO, ServeClient
from offload.transport.wrapper import remote_program, serve_program, store_flag

if TYPE_CHECKING:
    from offload.config.machines import Machine
    from offload.protocol.store import StoreClient
    from offload.protocol.wire import ByteReader, ByteWriter

__all__ = [
    "DAEMON",
    "MISMATCH",
    "SERVE",
    "Dialect",
    "daemon_program",
    "dialect_of",
    "mismatch_fix",
    "mismatched",
    "other_dialect",
]

LogSink = Callable[[str], None]
# What Nix's serve program and its daemon both say to a hello that is not theirs.
MISMATCH = "protocol mismatch"
# What ``nix-daemon --stdio`` says instead where it only relays to the builder's daemon (a
# user that is not root, as a key restricted to it logs in; Nix before 2.20, whose
# --stdio relays unless the daemon's socket is its own to serve): the daemon hung up on serve's
# hello. Only an ssh:// line's session meets it as a mismatch.
_RELAYED_EOF = "unexpected EOF from daemon socket"


def daemon_program(params: Mapping[str, str] | None = None) -> list[str]:
    """``nix-daemon --stdio [--store URI]`` as Nix's ssh-ng:// store runs it."""
    return [*remote_program(params, "nix-daemon"), "--stdio", *store_flag(params)]


@dataclass(frozen=True)
class Dialect:
    """The daemon's protocol (``offload.protocol.worker``) is imported only once a dialect
    speaking it is used: a run with only ssh:// builders never needs it (about 6 ms of every
    start)."""

    name: str  # "serve" or "daemon": what users read in messages
    program: Callable[[Mapping[str, str] | None], list[str]]

    @property
    def hello(self) -> bytes:
        """The client's first bytes."""
        if self.name == "daemon":
            from offload.protocol.worker import client as worker

            return worker.CLIENT_HELLO
        return CLIENT_HELLO

    @property
    def reply(self) -> bytes:
        """The first bytes of the program's answer."""
        if self.name == "daemon":
            from offload.protocol.worker import client as worker

            return worker.SERVER_HELLO
        return SERVER_HELLO

    def describe(self, params: Mapping[str, str] | None = None) -> str:
        return f"`{' '.join(self.program(params))}`"

    def client(
        self,
        reader: ByteReader,
        writer: ByteWriter,
        stderr: asyncio.StreamReader | None,
        on_log: LogSink,
        name: str,
    ) -> StoreClient:
        """A client on a session's pipes. The serve program reports on stderr, which its
        client reads; the daemon reports in-band, and its stderr is the caller's to drain."""
        if self.name == "daemon":
            from offload.protocol.worker import WorkerClient

            return WorkerClient(reader, writer, on_log=on_log, name=name)
        return ServeClient(reader, writer, stderr=stderr, on_log=on_log, name=name)


SERVE = Dialect("serve", serve_program)
DAEMON = Dialect("daemon", daemon_program)


def dialect_of(machine: Machine) -> Dialect:
    """``ssh-ng://`` machines are spoken to in the daemon's protocol, every other in serve."""
    return DAEMON if machine.scheme == "ssh-ng" else SERVE


def other_dialect(dialect: Dialect) -> Dialect:
    return SERVE if dialect is DAEMON else DAEMON


def mismatched(said: str, scheme: str) -> bool:
    """Whether what a session's program ``said`` to the hello of ``scheme`` (``ssh`` or
    ``ssh-ng``) is a refusal of that protocol (``MISMATCH``, or the relayed daemon's end)."""
    return MISMATCH in said or (scheme == "ssh" and _RELAYED_EOF in said)


def mismatch_fix(scheme: str, line: str, speaks_other: bool | None = None) -> tuple[str, str]:
    """(what is wrong, the fix) for a builder whose program said ``MISMATCH`` to the hello of
    ``scheme`` (``ssh`` or ``ssh-ng``), named at ``line``; ``speaks_other``: it answered the
    other scheme's hello (None: not asked)."""
    other = "ssh-ng" if scheme == "ssh" else "ssh"
    said = f"said '{MISMATCH}' to its hello"
    if scheme == "ssh":  # ``mismatched``: nix-daemon --stdio may relay to a daemon instead
        said = f"refused its hello ('{MISMATCH}', or a daemon it relays to hung up)"
    what = f"the builder's key runs another program than {scheme}:// speaks to: Nix there {said}"
    if speaks_other is False:
        fix = (
            "check the key's command= (or sshd's ForceCommand) on the builder: ssh:// needs "
            f"`{FORCED['ssh']}`, ssh-ng:// `{FORCED['ssh-ng']}`"
        )
        return f"{what}, and to {other}://'s too", fix
    if speaks_other:
        what += f"; it answers {other}://'s (`{FORCED[other]}`)"
    fix = (
        f"write {other}:// in {line} (a key restricted to `{FORCED[other]}` speaks only "
        f"that), or change the key's command= (or sshd's ForceCommand) on the builder to "
        f"`{FORCED[scheme]}`"
    )
    return what, fix
