"""A builder whose Nix daemon says, as the session opens, that it does not trust the ssh user
(Nix 2.15 and later, in the handshake): it builds none of the input-addressed derivations
offload sends, so the session is refused at once with the fix, before any build is accepted for
it (a review read Nix's source: offload-hook accepted, then the build failed, which Nix cannot
take back). Doctor keeps the session, to say so in its ``trusted`` row.

The Nix installed here (2.8) reports no trust: the daemon's side is scripted, the link's
bookkeeping above it is the real one.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from offload.build.faults import explain
from offload.errors import TransportError
from offload.protocol.wire import encode_int, encode_str, encode_strs
from offload.protocol.worker.records import WORKER_MAGIC_2, Frame
from offload.transport.dialect import DAEMON
from offload.transport.links.base import SessionPipes
from offload.transport.links.pool import Link
from tests.helpers.machines_text import one
from tests.helpers.worker_wire import Writer, stream

LAST = encode_int(Frame.LAST)


class _Daemon:
    """Sessions whose daemon (protocol 1.38) reports ``trust``: 1 trusted, 2 not trusted."""

    name = "ng"

    def __init__(self, trust: int) -> None:
        self.trust = trust
        self.closed = 0

    async def start(self, stack: contextlib.AsyncExitStack) -> SessionPipes:
        reply = encode_int(WORKER_MAGIC_2) + encode_int(0x126) + encode_strs([])
        reply += encode_str("2.24.0") + encode_int(self.trust) + LAST + LAST  # and SetOptions
        stack.callback(self._closed)
        return SessionPipes(stream(reply), Writer(), None, None, dialect=DAEMON)

    def _closed(self) -> None:
        self.closed += 1

    async def kill(self, pid: int, born: str | None = None) -> None:
        raise AssertionError("no remote process to kill")

    async def close(self) -> None:
        pass


async def _borrowed(link: Link) -> bool | None:
    async with link, link.session() as client:
        return getattr(client, "trusted", None)


def test_a_daemon_that_does_not_trust_the_user_is_refused_as_the_session_opens() -> None:
    daemon = _Daemon(trust=2)
    with pytest.raises(TransportError) as refused:
        asyncio.run(_borrowed(Link(daemon)))
    assert "does not trust the ssh user" in refused.value.message
    assert "trusted-users" in (refused.value.hint or "")
    assert refused.value.peer == "ng"
    # A session that could not be had, as one whose program did not start: offload-hook
    # takes a TransportError at a session's start for the builder unreachable, backs it off
    # and tries another (a DaemonError went past it, and every derivation was declined).
    assert type(refused.value) is TransportError
    assert daemon.closed == 1  # the session went with it


def test_doctor_keeps_the_session_to_say_so_itself() -> None:
    link = Link(_Daemon(trust=2))
    link.refuse_untrusted = False
    assert asyncio.run(_borrowed(link)) is False


def test_a_daemon_that_trusts_the_user_is_used() -> None:
    assert asyncio.run(_borrowed(Link(_Daemon(trust=1)))) is True


def test_offload_build_says_it_down_with_the_fix() -> None:
    daemon = _Daemon(trust=2)
    with pytest.raises(TransportError) as refused:
        asyncio.run(_borrowed(Link(daemon)))
    said = explain(one("ssh-ng://ng"), refused.value.message)
    assert said.startswith("its Nix daemon says it does not trust the ssh user")
    assert "add the user offload logs in as to `trusted-users` in ng's nix.conf" in said
