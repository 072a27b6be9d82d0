"""ServeClient against scripted server bytes, moving paths: NAR dumps, AddToStoreNar(s),
ImportPaths, copy_paths between two clients, and the dependency order paths are sent in."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import Awaitable, Callable
from functools import partial

import pytest

from offload.errors import ProtocolError, RemoteError, StoreError
from offload.protocol import client as serve_client
from offload.protocol.serve import PathInfo, copy_paths, topo_sort_infos
from tests.helpers.serve_wire import A, B, Z, connected, reader_with, run, s, strs, u64


def nar_of(contents: bytes) -> bytes:
    # nix-protocols.md 3.1: a single regular file.
    tokens = ["nix-archive-1", "(", "type", "regular", "contents"]
    return b"".join(s(t) for t in tokens) + s(contents) + s(")")


def test_dump_store_path_streams_nar() -> None:
    nar = nar_of(b"hello\n" * 5000)
    chunks: list[bytes] = []

    async def sink(chunk: bytes) -> None:
        chunks.append(chunk)

    async def go() -> None:
        client, w = await connected(nar + strs(A))
        assert await client.dump_store_path(A, sink) == len(nar)
        assert bytes(w.data) == u64(3) + s(A)
        assert b"".join(chunks) == nar
        # The reader stopped exactly at the end of the NAR.
        assert await client.query_valid_paths([A]) == {A}

    run(go())


def test_dump_store_path_sink_error_passes_through() -> None:
    class Boom(Exception):
        pass

    async def sink(chunk: bytes) -> None:
        raise Boom

    async def go() -> None:
        client, _ = await connected(nar_of(b"x"))
        with pytest.raises(Boom):
            await client.dump_store_path(A, sink)
        with pytest.raises(ProtocolError, match="unusable"):
            await client.query_valid_paths([A])

    run(go())


def _info(nar: bytes, path: str = B, refs: tuple[str, ...] = (A,)) -> PathInfo:
    return PathInfo(
        path=path,
        deriver="/nix/store/dddddddddddddddddddddddddddddddd-b.drv",
        references=refs,
        nar_size=len(nar),
        nar_hash="sha256:" + hashlib.sha256(nar).hexdigest(),
        ca=None,
        sigs=("k2:x", "k1:y"),
    )


def _unsigned(nar: bytes, path: str, refs: tuple[str, ...]) -> PathInfo:
    return dataclasses.replace(_info(nar, path, refs), sigs=())


def test_a_path_with_signatures_or_a_content_address_keeps_them() -> None:
    # An export stream holds neither: a fixed output fetched home had no ca here, and a
    # builder's signatures were lost. Such a path goes by AddToStoreNar, with both.
    nar_a, nar_b = nar_of(b"a"), nar_of(b"b")
    signed = _info(nar_a, A, ())
    fixed = dataclasses.replace(_unsigned(nar_b, B, (A,)), ca="fixed:r:sha256:" + "0" * 52)

    async def go() -> None:
        src, _ = await connected(nar_a + nar_b)
        dst, dst_w = await connected(u64(1) + u64(1))
        await copy_paths(src, dst, [signed, fixed])
        data = bytes(dst_w.data)
        assert data.startswith(u64(9) + s(A))
        assert s("k2:x") in data
        assert data.index(u64(9) + s(B)) < data.index(s("fixed:r:sha256:" + "0" * 52))
        assert u64(4) not in data[:8]  # no ImportPaths

    run(go())


def test_add_to_store_nar_bytes() -> None:
    nar = nar_of(b"contents")
    info = _info(nar)

    async def producer(sink: Callable[[bytes], Awaitable[None]]) -> None:
        await sink(nar[:10])
        await sink(nar[10:])

    async def go() -> None:
        client, w = await connected(u64(1))
        await client.add_to_store_nar(info, producer, registration_time=1795293178)
        expected = (
            u64(9)
            + s(B)
            + s("/nix/store/dddddddddddddddddddddddddddddddd-b.drv")
            + s(info.nar_hash)
            + strs(A)
            + u64(1795293178)
            + u64(len(nar))
            + u64(0)
            + strs("k1:y", "k2:x")
            + s("")
            + nar
        )
        assert bytes(w.data) == expected

    run(go())


@pytest.mark.parametrize("delta", [-1, 1])
def test_add_to_store_nar_size_mismatch(delta: int) -> None:
    nar = nar_of(b"contents")
    info = _info(nar)

    async def producer(sink: Callable[[bytes], Awaitable[None]]) -> None:
        await sink(nar + b"!" if delta > 0 else nar[:-1])

    async def go() -> None:
        client, w = await connected(u64(1))
        with pytest.raises(ProtocolError, match="narSize"):
            await client.add_to_store_nar(info, producer, registration_time=0)
        # Nothing beyond narSize reached the remote (an oversized chunk is refused whole).
        sent = nar[:-1] if delta < 0 else b""
        assert bytes(w.data) == _header(info) + sent

    run(go())


def _header(info: PathInfo) -> bytes:
    return (
        u64(9)
        + s(info.path)
        + s(info.deriver or "")
        + s(info.nar_hash)
        + strs(*info.references)
        + u64(0)
        + u64(info.nar_size)
        + u64(0)
        + strs(*sorted(info.sigs))
        + s("")
    )


def test_add_to_store_nar_bad_ack() -> None:
    nar = nar_of(b"c")

    async def producer(sink: Callable[[bytes], Awaitable[None]]) -> None:
        await sink(nar)

    async def go() -> None:
        client, _ = await connected(u64(0))
        with pytest.raises(ProtocolError, match="unexpected AddToStoreNar reply 0"):
            await client.add_to_store_nar(_info(nar), producer)

    run(go())


def test_add_to_store_nars_sends_every_path_before_reading_a_reply() -> None:
    nar_a, nar_b = nar_of(b"a" * 1000), nar_of(b"b")
    info_a, info_b = _info(nar_a, A, ()), _info(nar_b, B, (A,))

    async def go() -> None:
        client, w = await connected(b"", eof=False)
        reader = client._reader  # the server side of the test pipe
        assert isinstance(reader, asyncio.StreamReader)

        async def push_a(sink: Callable[[bytes], Awaitable[None]]) -> None:
            await sink(nar_a)

        async def push_b(sink: Callable[[bytes], Awaitable[None]]) -> None:
            # The server answers only once both NARs are in: a client that waited for the
            # first reply before sending the second would never get here.
            await sink(nar_b)
            reader.feed_data(u64(1) + u64(1))

        async with asyncio.timeout(5):
            await client.add_to_store_nars(
                [(info_a, push_a), (info_b, push_b)], registration_time=0
            )
        assert bytes(w.data) == _header(info_a) + nar_a + _header(info_b) + nar_b
        assert client.usable

    run(go())


def test_add_to_store_nars_fails_on_any_bad_reply() -> None:
    nar_a, nar_b = nar_of(b"a"), nar_of(b"b")
    info_a, info_b = _info(nar_a, A, ()), _info(nar_b, B, (A,))

    async def push(nar: bytes, sink: Callable[[bytes], Awaitable[None]]) -> None:
        await sink(nar)

    async def go() -> None:
        client, _ = await connected(u64(1) + u64(0))
        items = [(info_a, partial(push, nar_a)), (info_b, partial(push, nar_b))]
        with pytest.raises(ProtocolError, match="unexpected AddToStoreNar reply 0"):
            await client.add_to_store_nars(items, registration_time=0)
        assert not client.usable

    run(go())


def test_copy_paths_streams_between_clients_in_order() -> None:
    nar_a, nar_b = nar_of(b"a" * 70000), nar_of(b"b")
    info_a, info_b = _unsigned(nar_a, A, ()), _unsigned(nar_b, B, (A,))

    def trailer(info: PathInfo) -> bytes:
        return (
            u64(0x4558494E) + s(info.path) + strs(*info.references) + s(info.deriver or "") + u64(0)
        )

    async def go() -> None:
        src, src_w = await connected(nar_a + nar_b)
        dst, dst_w = await connected(u64(1))
        moved = await copy_paths(src, dst, [info_a, info_b])
        assert moved == len(nar_a) + len(nar_b)
        assert bytes(src_w.data) == u64(3) + s(A) + u64(3) + s(B)
        # One ImportPaths request carries both, dependencies first, as nix-store --export.
        expected = u64(4) + u64(1) + nar_a + trailer(info_a) + u64(1) + nar_b + trailer(info_b)
        assert bytes(dst_w.data) == expected + u64(0)

    run(go())


def test_copy_paths_sends_a_path_over_the_import_limit_alone_by_add_to_store_nar(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nar_a, nar_b = nar_of(b"a" * 70000), nar_of(b"b")
    info_a, info_b = _unsigned(nar_a, A, ()), _unsigned(nar_b, B, (A,))
    monkeypatch.setattr(serve_client, "IMPORT_LIMIT", 1000)

    async def go() -> None:
        src, _ = await connected(nar_a + nar_b)
        dst, dst_w = await connected(u64(1) + u64(1))
        await copy_paths(src, dst, [info_a, info_b])
        data = bytes(dst_w.data)
        assert data.startswith(u64(9) + s(A))  # AddToStoreNar for the big one
        assert data.index(nar_a) < data.index(u64(4) + u64(1) + nar_b)  # then an export stream

    run(go())


def test_copy_paths_source_failure_is_the_sources_error() -> None:
    nar_a = nar_of(b"a" * 100)
    info_a = _info(nar_a, A, ())

    async def go() -> None:
        stderr = reader_with(b"error: path 'x' is not valid\n")
        src, _ = await connected(nar_a[:50], stderr=stderr)
        src.name = "src"
        dst, _ = await connected(u64(1))
        dst.name = "dst"
        with pytest.raises(RemoteError, match=r"^src: path 'x' is not valid"):
            await copy_paths(src, dst, [info_a])
        # Both connections are mid-request and refuse further use.
        with pytest.raises(ProtocolError, match="dst: connection unusable"):
            await dst.query_valid_paths([A])

    run(go())


@pytest.mark.parametrize("said", ["hash", "size"])
def test_a_nar_other_than_its_source_said_is_the_sources_error_and_no_trailer_goes(
    said: str,
) -> None:
    # Nix's importPaths hashes what arrives and registers that: the builder's word (its path
    # info) was never held against its bytes.
    nar_a, other = nar_of(b"a" * 100), nar_of(b"b" * 100)  # the same size
    info_a = _info(nar_a, A, ())
    if said == "size":  # the right bytes, said to be more of them
        info_a = dataclasses.replace(info_a, nar_size=len(nar_a) + 8)

    async def go() -> None:
        src, _ = await connected(other if said == "hash" else nar_a)
        src.name = "src"
        dst, dst_w = await connected(u64(1))
        with pytest.raises(
            ProtocolError, match=r"^src: .*-a arrived as another NAR than said"
        ) as raised:
            await copy_paths(src, dst, [info_a])
        assert raised.value.peer == "src"  # the builder's fault, not this host's store
        assert b"NIXE" not in bytes(dst_w.data)  # no trailer: the receiver registers nothing

    run(go())


def test_import_paths_sends_stream_and_reads_ack() -> None:
    stream = u64(1) + nar_of(b"z") + u64(0x4558494E) + s(A) + strs() + s("") + u64(0) + u64(0)

    async def producer(sink: Callable[[bytes], Awaitable[None]]) -> None:
        await sink(stream)

    async def go() -> None:
        client, w = await connected(u64(1))
        await client.import_paths(producer)
        assert bytes(w.data) == u64(4) + stream

    run(go())


def _pi(path: str, *refs: str) -> PathInfo:
    return PathInfo(path, None, refs, 1, "sha256:x")


def test_topo_sort_dependencies_first() -> None:
    c = "/nix/store/cccccccccccccccccccccccccccccccc-c"
    infos = {
        Z: _pi(Z, B, Z, "/nix/store/outside"),
        B: _pi(B, A, B),
        A: _pi(A),
        c: _pi(c, A),
    }
    order = [i.path for i in topo_sort_infos(infos)]
    assert sorted(order) == sorted(infos)
    for info in infos.values():
        for ref in info.references:
            if ref in infos and ref != info.path:
                assert order.index(ref) < order.index(info.path)


def test_topo_sort_deep_chain() -> None:
    paths = [f"/nix/store/{i:032d}-p" for i in range(3000)]
    infos = {p: _pi(p, *paths[i + 1 : i + 2]) for i, p in enumerate(paths)}
    assert [i.path for i in topo_sort_infos(infos)] == paths[::-1]


def test_topo_sort_cycle_is_store_error() -> None:
    with pytest.raises(StoreError, match="cycle"):
        topo_sort_infos({A: _pi(A, B), B: _pi(B, A)})
