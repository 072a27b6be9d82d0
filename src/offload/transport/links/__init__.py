"""Links: one per builder per run, lending out long-lived serve sessions.

A ``Link`` (``pool``) owns a pool of ``nix-store --serve --write`` sessions to one store and
lends them out with ``async with link.session() as client``; it stops a session's remote
process tree when a request was cut short, or on ``link.cancel(client)``.

Where the sessions come from is a ``SessionTransport`` (``base``): ``SshTransport``
(``ssh_master``: one ControlMaster connection per builder, sessions multiplexed over it, remote
kills sent over it too; ``ssh_errors``: its failures said from ssh's words, with the fix) or
``LocalTransport`` (``local``: a local ``nix-store --serve --write``). ``MachineLink``
(``machine``) and ``LocalLink`` are links over each.
"""

from offload.transport.links.base import (
    LinkStats,
    LogSink,
    SessionPipes,
    SessionTransport,
    open_serve,
)
from offload.transport.links.local import LocalLink, LocalTransport
from offload.transport.links.machine import MachineLink
from offload.transport.links.pool import BuilderFullError, Link
from offload.transport.links.ssh_master import SshTransport

__all__ = [
    "BuilderFullError",
    "Link",
    "LinkStats",
    "LocalLink",
    "LocalTransport",
    "LogSink",
    "MachineLink",
    "SessionPipes",
    "SessionTransport",
    "SshTransport",
    "open_serve",
]
