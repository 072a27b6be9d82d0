"""A path info with no narHash or narSize, from a protocol version that carries them (serve
2.4 on, every daemon), is refused: taken as Nix's "unknown", it switched the checks of the
NAR that followed off, and a builder pushed any bytes into this host's store."""

from __future__ import annotations

import asyncio

import pytest

from offload.errors import ProtocolError
from offload.protocol.records import PathInfo, checked_info
from offload.protocol.store import copy_paths
from offload.scheduler.run.closure_copy import to_copy
from offload.transport.fake.paths import FakePath, nar_of_text, store_path
from offload.transport.fake.store import FakeStore
from offload.typing_compat import override


class Unsaid(FakePath):
    """A path whose store says neither its NAR's size nor its hash."""

    @property
    @override
    def nar_size(self) -> int:
        return 0

    @property
    @override
    def nar_hash(self) -> str:
        return ""


def test_a_builder_that_says_no_nar_hash_or_size_is_refused() -> None:
    out = store_path("out")
    builder = FakeStore("b", [Unsaid(out, (), nar_of_text(b"x" * 3 * 1024 * 1024))])
    local = FakeStore("local")

    async def copy() -> None:
        async with builder.connect(name="b") as src, local.connect(name="local") as dst:
            infos = await to_copy(src, dst, [out], whole=True)
            await copy_paths(src, dst, infos)

    with pytest.raises(ProtocolError, match="no narHash or narSize"):
        asyncio.run(copy())
    assert not local.has(out)  # it was registered, 3 MiB said to be 0


@pytest.mark.parametrize(("size", "nar_hash"), [(0, "sha256:" + "0" * 52), (10, "")])
def test_either_missing_is_refused_where_the_protocol_carries_both(
    size: int, nar_hash: str
) -> None:
    info = PathInfo(path=store_path("p"), deriver=None, references=(), nar_size=size,
                    nar_hash=nar_hash)  # fmt: skip
    with pytest.raises(ProtocolError, match="which Nix always sends"):
        checked_info(info)
    assert checked_info(info, complete=False) is info  # serve before 2.4: no narHash
