"""A session's stdout that ends after the builder stopped answering (``streams.silence``): said
by both protocols' clients as a builder that did not answer for so long during what they were
doing, not as one that closed the connection; and the rule that tells the two apart (over ssh,
the connection gone, silent for at least ssh's keepalive budget)."""

from __future__ import annotations

import asyncio
import time

import pytest

from offload.errors import PeerSilent, ProtocolError
from offload.protocol.wire import encode_int, encode_str
from offload.protocol.worker import WorkerClient
from offload.protocol.worker.records import WORKER_MAGIC_2, Frame
from offload.transport.links.base import LinkStats, SessionPipes
from offload.transport.links.streams import CountingReader, silence
from offload.transport.ssh_options import Keepalive
from tests.helpers import worker_wire
from tests.helpers.serve_wire import A, connected, run

WHY = "the test's reason"
BUDGET = Keepalive().budget  # offload's own: 4 x 2 s


def _silent(_last: float) -> PeerSilent:
    return PeerSilent(BUDGET + 3.4, WHY)


def test_the_serve_client_says_a_builder_that_stopped_answering() -> None:
    async def go() -> None:
        client, _ = await connected(b"", stderr=asyncio.StreamReader())
        client._reader = CountingReader(client._reader, LinkStats(), _silent)
        with pytest.raises(ProtocolError) as info:
            await client.query_closure([A])
        assert info.value.message == (
            f"b1 did not answer for 11 s during QueryClosure, and its connection ended ({WHY})"
        )
        assert info.value.peer == "b1"

    run(go())


def test_the_daemon_client_says_a_builder_that_stopped_answering() -> None:
    reply = encode_int(WORKER_MAGIC_2) + encode_int(0x122) + encode_str("2.8.0")
    reply += encode_int(Frame.LAST) * 2  # the handshake's and SetOptions' last frames
    reader = CountingReader(worker_wire.stream(reply), LinkStats(), _silent)
    client = WorkerClient(reader, worker_wire.Writer(), name="b1")

    async def go() -> None:
        await client.handshake()
        with pytest.raises(ProtocolError) as info:
            await client.query_valid_paths([A])
        assert info.value.message.startswith("b1 did not answer for 11 s during ")
        assert info.value.message.endswith(f", and its connection ended ({WHY})")

    run(go())


def _pipes(*, over_ssh: bool, gone: bool, keepalive: Keepalive | None = None) -> SessionPipes:
    writer = worker_wire.Writer()
    return SessionPipes(
        worker_wire.stream(b""),
        writer,
        None,
        None,
        over_ssh=over_ssh,
        connection_gone=lambda: gone,
        keepalive=keepalive or Keepalive(),
    )


@pytest.mark.parametrize(
    ("over_ssh", "gone", "quiet", "said"),
    [
        (True, True, BUDGET + 1, True),
        (True, True, BUDGET - 1, False),  # closed before ssh could have given up
        (True, False, BUDGET + 1, False),  # the session closed, the connection up
        (False, True, BUDGET + 1, False),  # a local nix-store: no keepalives
    ],
)
def test_the_silence_rule(over_ssh: bool, gone: bool, quiet: float, said: bool) -> None:
    now = time.monotonic()
    ended = silence(_pipes(over_ssh=over_ssh, gone=gone), lambda: now - quiet - 30)
    found = ended(now - quiet)
    assert (found is not None) == said
    if found is not None:
        assert found.seconds >= quiet


def test_a_line_on_stderr_counts_as_an_answer() -> None:
    now = time.monotonic()
    ended = silence(_pipes(over_ssh=True, gone=True), lambda: now)
    assert ended(now - BUDGET - 30) is None


@pytest.mark.parametrize(
    ("keepalive", "quiet", "said"),
    [
        (Keepalive(1, 3), 3.5, True),  # a user's NIX_SSHOPTS: ssh gives up after 4 s
        (Keepalive(1, 3), 2.5, False),
        (Keepalive(2, 0), 2.5, True),  # ssh gives up at its first unanswered ask
        (Keepalive(10, 3), BUDGET + 1, False),  # a longer one: 8 s is no proof
        (Keepalive(0, 3), 3600, False),  # no keepalives: ssh never gives up
    ],
)
def test_the_silence_rule_takes_the_sessions_keepalive(
    keepalive: Keepalive, quiet: float, said: bool
) -> None:
    now = time.monotonic()
    pipes = _pipes(over_ssh=True, gone=True, keepalive=keepalive)
    assert (silence(pipes, lambda: now - quiet - 30)(now - quiet) is not None) == said
