"""What AddToStoreNar and AddMultipleToStore send besides the NAR, and NARs held to their size.

A path's info goes without its path (the requests put it first or leave it out), and a NAR
producer is wrapped so that it can push neither more nor fewer bytes than the info's narSize
says: bytes past it would be read by the daemon as the next request.
"""

from __future__ import annotations

from offload.errors import ProtocolError
from offload.protocol.client import NarProducer, Sink
from offload.protocol.records import PathInfo

__all__ = ["SizeMismatch", "exact_nar"]


class SizeMismatch(ProtocolError):
    """A producer pushed more or fewer bytes than the narSize announced."""


def exact_nar(nar: NarProducer, info: PathInfo) -> NarProducer:
    """``nar``, checked to push exactly ``info.nar_size`` bytes."""

    async def producer(sink: Sink) -> None:
        sent = 0

        async def counted(chunk: bytes) -> None:
            nonlocal sent
            if sent + len(chunk) > info.nar_size:
                msg = f"the NAR of {info.path} is longer than its narSize {info.nar_size}"
                raise SizeMismatch(msg)
            sent += len(chunk)
            await sink(chunk)

        await nar(counted)
        if sent != info.nar_size:
            msg = f"the NAR of {info.path} has {sent} bytes, narSize says {info.nar_size}"
            raise SizeMismatch(msg)

    return producer
