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
from offload.transport.links.streams import KEEPALIVE_BUDGET, CountingReader, silence
from tests.helpers import worker_wire
from tests.helpers.serve_wire import A, connected, run

WHY = "the test's reason"


def _silent(_last: float) -> PeerSilent:
    return PeerSilent(KEEPALIVE_BUDGET + 3.4, WHY)


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


def _pipes(*, over_ssh: bool, gone: bool) -> SessionPipes:
    writer = worker_wire.Writer()
    return SessionPipes(
        worker_wire.stream(b""), writer, None, None, over_ssh=over_ssh, connection_gone=lambda: gone
    )


@pytest.mark.parametrize(
    ("over_ssh", "gone", "quiet", "said"),
    [
        (True, True, KEEPALIVE_BUDGET + 1, True),
        (True, True, KEEPALIVE_BUDGET - 1, False),  # closed before ssh could have given up
        (True, False, KEEPALIVE_BUDGET + 1, False),  # the session closed, the connection up
        (False, True, KEEPALIVE_BUDGET + 1, False),  # a local nix-store: no keepalives
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
    assert ended(now - KEEPALIVE_BUDGET - 30) is None
