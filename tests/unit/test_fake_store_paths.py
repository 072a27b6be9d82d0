"""The real ServeClient against FakeStore, handshake, queries and moving paths: the fake's values,
the server's handshake and errors, queries, and paths added, imported and copied in."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import pytest

from offload.errors import RemoteError
from offload.protocol.serve import PathInfo, ServeClient, copy_paths, topo_sort_infos
from offload.protocol.wire import encode_int, encode_strs
from offload.store.nar import dump_nar, nar_hash_nix32
from offload.store.path import is_store_path
from offload.transport.fake import FakePath, FakeStore, nar_of_text, store_path
from tests.helpers.fake_stores import DRV, SRC, A, B, C, D, chain, nar_of, run

# -- values -----------------------------------------------------------------------------------


def test_nar_of_text_matches_dump_of_a_real_file(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("hello\n")
    assert nar_of_text("hello\n") == dump_nar(f)
    f.chmod(0o755)
    assert nar_of_text("hello\n", executable=True) == dump_nar(f)


def test_store_path_is_a_valid_stable_store_path() -> None:
    assert store_path("x") == store_path("x") != store_path("y")
    assert is_store_path(store_path("x-1.0.drv"))
    assert store_path("x").endswith("-x")


# -- handshake and queries ----------------------------------------------------------------------


def test_handshake_reports_2_7() -> None:
    async def go() -> None:
        async with FakeStore("s").connect() as client:
            assert client.server_version == 0x207
            assert client.name == "s"

    run(go())


async def raw_session(store: FakeStore, data: bytes) -> tuple[bytes, bytes]:
    """Serve one session fed ``data``; returns what the server wrote to stdout and stderr."""
    inp = asyncio.StreamReader()
    inp.feed_data(data)
    inp.feed_eof()

    class Sink:
        def __init__(self) -> None:
            self.data = bytearray()
            self.closed = False

        def write(self, b: bytes) -> None:
            self.data += b

        async def drain(self) -> None:
            pass

        def close(self) -> None:
            self.closed = True

    out, err = Sink(), Sink()
    await store.serve(inp, out, err)
    assert out.closed
    assert err.closed
    return bytes(out.data), bytes(err.data)


def test_bad_magic_is_protocol_mismatch() -> None:
    out, err = run(raw_session(FakeStore("s"), encode_int(0x1234) + encode_int(0x207)))
    assert out == b""
    assert err == b"error: protocol mismatch\n"


def test_unknown_command_is_an_error_with_nixs_wording() -> None:
    hello_bytes = encode_int(0x390C9DEB) + encode_int(0x207)
    out, err = run(raw_session(FakeStore("s"), hello_bytes + encode_int(42)))
    # The server's magic and version went out before the failing command.
    assert out == encode_int(0x5452EECB) + encode_int(0x207)
    assert err == b"error: unknown serve command 42\n"


def test_eof_between_commands_ends_quietly_and_the_store_serves_raw_streams() -> None:
    request = encode_int(1) + encode_int(0) + encode_int(0) + encode_strs([D, A, SRC])
    hello_bytes = encode_int(0x390C9DEB) + encode_int(0x207)
    out, err = run(raw_session(FakeStore("s", chain()), hello_bytes + request))
    assert err == b""
    # The valid subset, as a StorePathSet sorted by base name.
    expected = sorted([A, D], key=lambda p: p.rpartition("/")[2])
    assert out == encode_int(0x5452EECB) + encode_int(0x207) + encode_strs(expected)


def test_queries() -> None:
    store = FakeStore("s", chain())

    async def go() -> None:
        async with store.connect() as client:
            assert await client.query_valid_paths([A, D, SRC]) == {A, D}
            infos = await client.query_path_infos([C, SRC, A])
            assert set(infos) == {A, C}
            c = infos[C]
            nar = nar_of_text("c\n")
            assert c.references == tuple(sorted([B, C], key=lambda p: p.rpartition("/")[2]))
            assert c.deriver == DRV
            assert c.nar_size == len(nar)
            assert c.nar_hash == nar_hash_nix32(hashlib.sha256(nar).hexdigest())
            assert (c.ca, c.sigs) == (None, ())
            assert infos[A].deriver is None
            assert await client.query_closure([C]) == {A, B, C}
            assert await client.query_closure([D, A]) == {A, D}
            assert await nar_of(client, B) == nar_of_text("b\n")
            # The stream stayed in step after the NAR.
            assert await client.query_valid_paths([B]) == {B}

    run(go())


def test_dump_of_an_invalid_path_is_a_remote_error() -> None:
    async def go() -> None:
        client = await FakeStore("s").open_client()
        with pytest.raises(RemoteError, match=f"path '{A}' is not valid"):
            await nar_of(client, A)
        await client.close()

    run(go())


# -- moving paths -------------------------------------------------------------------------------


def test_copy_paths_moves_a_closure_in_dependency_order() -> None:
    src_store = FakeStore("src", chain())
    dst_store = FakeStore("dst")

    async def go() -> None:
        async with src_store.connect() as src, dst_store.connect() as dst:
            closure = await src.query_closure([C])
            infos = await src.query_path_infos(closure)
            moved = await copy_paths(src, dst, topo_sort_infos(infos))
            assert moved == sum(i.nar_size for i in infos.values())
            copied = await dst.query_path_infos(closure)
            assert copied == infos

    run(go())
    assert dst_store.received == [A, B, C]
    for path in (A, B, C):
        assert dst_store.paths[path].nar_hash == src_store.paths[path].nar_hash
        assert dst_store.paths[path].nar == src_store.paths[path].nar
    assert not dst_store.has(D)


def info_of(fp: FakePath, **changes: Any) -> PathInfo:
    info = fp.info()
    return PathInfo(**{**info.__dict__, **changes})


async def push(client: ServeClient, info: PathInfo, nar: bytes) -> None:
    async def producer(sink: Any) -> None:
        await sink(nar)

    await client.add_to_store_nar(info, producer)


def test_add_to_store_nar_with_a_missing_reference_registers_nothing() -> None:
    store = FakeStore("s")
    fp = FakePath.from_text(B, "b\n", references=[A])

    async def go() -> None:
        client = await store.open_client()
        with pytest.raises(RemoteError) as caught:
            await push(client, fp.info(), fp.nar)
        assert caught.value.message == f"s: path '{A}' is not valid"
        assert caught.value.hint is not None
        await client.close()

    run(go())
    assert not store.has(B)
    assert store.received == []


def test_add_to_store_nar_accepts_a_base16_hash_as_nix_28_sends_it() -> None:
    store = FakeStore("s")
    fp = FakePath.from_text(A, "a\n")

    async def go() -> None:
        async with store.connect() as client:
            await push(client, info_of(fp, nar_hash=hashlib.sha256(fp.nar).hexdigest()), fp.nar)
            # Adding a valid path again is accepted and changes nothing.
            await push(client, fp.info(), fp.nar)

    run(go())
    assert store.paths[A] == fp
    assert store.received == [A]


def test_add_to_store_nar_with_a_wrong_hash_registers_nothing() -> None:
    store = FakeStore("s")
    fp = FakePath.from_text(A, "a\n")

    async def go() -> None:
        client = await store.open_client()
        wrong = info_of(fp, nar_hash=nar_hash_nix32(hashlib.sha256(b"x").hexdigest()))
        with pytest.raises(RemoteError, match=f"hash mismatch importing path '{A}'; specified:"):
            await push(client, wrong, fp.nar)
        await client.close()

    run(go())
    assert not store.has(A)


def test_import_paths_registers_an_export_stream() -> None:
    store = FakeStore("s", [FakePath.from_text(A, "a\n")])
    fp = FakePath.from_text(B, "b\n", references=[A], deriver=DRV)

    def export_item(f: FakePath) -> bytes:
        # nix-protocols.md 3.2, written out by hand.
        return (
            encode_int(1)
            + f.nar
            + encode_int(0x4558494E)
            + encode_strs([f.path])[8:]
            + encode_strs(f.references)
            + encode_strs([f.deriver or ""])[8:]
            + encode_int(0)
        )

    async def go() -> None:
        async with store.connect() as client:

            async def producer(sink: Any) -> None:
                await sink(export_item(fp) + encode_int(0))

            await client.import_paths(producer)
            assert (await client.query_path_infos([B]))[B] == fp.info()

    run(go())
    assert store.received == [B]
