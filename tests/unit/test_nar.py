from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from offload.errors import ProtocolError, StoreError
from offload.store.nar import NarStats, copy_nar, dump_nar, nar_hash_nix32


def tool(name: str) -> str:
    found = shutil.which(name)
    assert found is not None, f"{name} is not installed"
    return found


def run(*argv: str) -> bytes:
    return subprocess.run([tool(argv[0]), *argv[1:]], check=True, capture_output=True).stdout


def s(token: bytes) -> bytes:
    """One NAR token, built independently of the code under test."""
    return struct.pack("<Q", len(token)) + token + b"\0" * (-len(token) % 8)


MAGIC = s(b"nix-archive-1")


def regular(contents: bytes, *, executable: bool = False) -> bytes:
    exe = s(b"executable") + s(b"") if executable else b""
    return s(b"(") + s(b"type") + s(b"regular") + exe + s(b"contents") + s(contents) + s(b")")


def directory(*entries: tuple[bytes, bytes]) -> bytes:
    body = b"".join(
        s(b"entry") + s(b"(") + s(b"name") + s(name) + s(b"node") + node + s(b")")
        for name, node in entries
    )
    return s(b"(") + s(b"type") + s(b"directory") + body + s(b")")


async def copy(
    data: bytes,
    *,
    chunk: int = 1 << 16,
    eof: bool = True,
    trailing: bytes = b"",
    limit: int | None = None,
) -> tuple[NarStats, list[bytes], asyncio.StreamReader]:
    reader = asyncio.StreamReader()
    reader.feed_data(data + trailing)
    if eof:
        reader.feed_eof()
    chunks: list[bytes] = []

    async def sink(piece: bytes) -> None:
        chunks.append(piece)

    # Guards against a reader that waits for bytes that will never come.
    stats = await asyncio.wait_for(copy_nar(reader, sink, chunk=chunk, limit=limit), timeout=10)
    return stats, chunks, reader


def copy_sync(data: bytes, **kwargs: object) -> tuple[NarStats, list[bytes]]:
    stats, chunks, _ = asyncio.run(copy(data, **kwargs))  # type: ignore[arg-type]
    return stats, chunks


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    root.mkdir()
    # Created out of order on purpose: the NAR must list entries sorted by bytes.
    (root / "zeta").write_bytes(b"last\n")
    sub = root / "sub"
    sub.mkdir()
    (sub / "nested.txt").write_bytes(b"nested contents")
    (sub / "deeper").mkdir()
    (sub / "deeper" / "empty-dir").mkdir()
    tool_path = root / "a-tool"
    tool_path.write_bytes(b"#!/bin/sh\necho hi\n")
    tool_path.chmod(0o755)
    (root / "empty").write_bytes(b"")
    (root / "Upper").write_bytes(b"capital sorts first")
    (root / "a.b").write_bytes(b"dot")
    (root / "a-b").write_bytes(b"dash")
    (root / "link").symlink_to("sub/nested.txt")
    (root / "dangling").symlink_to("/does/not/exist")
    (root / "big.bin").write_bytes(bytes(range(256)) * 1000 + b"tail")  # not a multiple of 8
    (root / "group-exec-only").write_bytes(b"x")
    (root / "group-exec-only").chmod(0o654)  # only the owner's x bit counts
    (root / "\u00e9t\u00e9").write_bytes(b"utf-8 name")
    return root


def test_dump_nar_equals_nix_store_dump(tree: Path) -> None:
    assert dump_nar(tree) == run("nix-store", "--dump", str(tree))


@pytest.mark.parametrize("name", ["empty", "a-tool", "link", "big.bin", "sub"])
def test_dump_nar_single_nodes(tree: Path, name: str) -> None:
    assert dump_nar(tree / name) == run("nix-store", "--dump", str(tree / name))


def test_dump_nar_rejects_special_files(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(StoreError, match="not a regular file"):
        dump_nar(fifo)
    with pytest.raises(StoreError, match="cannot archive"):
        dump_nar(tmp_path / "missing")


def test_copy_nar_reproduces_nix_dump_and_hash(tree: Path) -> None:
    nar = run("nix-store", "--dump", str(tree))
    stats, chunks = copy_sync(nar, chunk=4096)
    assert b"".join(chunks) == nar
    assert stats.size == len(nar)
    assert stats.sha256 == hashlib.sha256(nar).hexdigest()
    # nix-hash without --flat hashes the path's NAR serialisation.
    assert stats.sha256 == run("nix-hash", "--type", "sha256", str(tree)).decode().strip()
    assert max(len(c) for c in chunks) <= 4096
    # The 256 KB file was not handed over in one piece.
    assert len(chunks) > len(nar) // 4096


def test_copy_nar_matches_store_nar_hash(tree: Path) -> None:
    store_path = run("nix-store", "--add", str(tree)).decode().strip()
    nar = run("nix-store", "--dump", store_path)
    stats, chunks = copy_sync(nar)
    assert b"".join(chunks) == nar
    assert (
        nar_hash_nix32(stats.sha256)
        == run("nix-store", "-q", "--hash", store_path).decode().strip()
    )
    assert stats.size == int(run("nix-store", "-q", "--size", store_path))


def test_nar_hash_nix32_recorded() -> None:
    # `nix-hash --type sha256 --to-base32 2cf24dba...` on Nix 2.8.0.
    digest = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert nar_hash_nix32(digest) == "sha256:094qif9n4cq4fdg459qzbhg1c6wywawwaaivx0k0x8xhbyx4vwic"
    with pytest.raises(StoreError, match="not hexadecimal"):
        nar_hash_nix32("xyz")
    with pytest.raises(StoreError, match="not 32"):
        nar_hash_nix32("abcd")


@pytest.mark.parametrize(
    "nar",
    [
        MAGIC + regular(b""),
        MAGIC + regular(b"seven b", executable=True),
        MAGIC + s(b"(") + s(b"type") + s(b"symlink") + s(b"target") + s(b"/x") + s(b")"),
        MAGIC + directory(),
        MAGIC + directory((b"a", directory((b"b", directory((b"c", regular(b"deep"))))))),
    ],
    ids=["empty-file", "executable", "symlink", "empty-dir", "nested"],
)
def test_copy_nar_small_shapes(nar: bytes) -> None:
    stats, chunks = copy_sync(nar, chunk=8)
    assert b"".join(chunks) == nar
    assert all(0 < len(c) <= 8 for c in chunks)
    assert stats == NarStats(size=len(nar), sha256=hashlib.sha256(nar).hexdigest())


def test_copy_nar_without_sink() -> None:
    nar = MAGIC + directory((b"f", regular(b"data")))

    async def main() -> NarStats:
        reader = asyncio.StreamReader()
        reader.feed_data(nar)
        reader.feed_eof()
        return await copy_nar(reader)

    assert asyncio.run(main()).size == len(nar)


def test_copy_nar_stops_exactly_at_the_end() -> None:
    nar = MAGIC + directory((b"f", regular(b"data")), (b"g", regular(b"x" * 100)))

    async def main() -> None:
        # No EOF: reading one byte past the NAR would wait forever (and hit wait_for's timeout).
        stats, chunks, reader = await copy(nar, eof=False, trailing=b"TRAILING")
        assert stats.size == len(nar)
        assert b"".join(chunks) == nar
        assert await reader.readexactly(8) == b"TRAILING"
        # Two NARs back to back, as in an export stream, are read one at a time.
        reader.feed_data(nar + nar)
        reader.feed_eof()
        first = await copy_nar(reader)
        second = await copy_nar(reader)
        assert first == second == stats
        assert reader.at_eof()

    asyncio.run(main())


def test_a_nar_longer_than_its_limit_is_refused_before_the_excess_is_read() -> None:
    # A builder's narSize of 512 bytes, then a file it says is 300 MiB: nothing of the file is
    # read, held or passed on (the hook held small NARs in memory, and wrote large ones).
    head = MAGIC + s(b"(") + s(b"type") + s(b"regular") + s(b"contents")
    huge = head + (300 << 20).to_bytes(8, "little")
    chunks: list[bytes] = []

    async def sink(chunk: bytes) -> None:
        chunks.append(chunk)

    async def main() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(huge)  # no EOF, no contents: reading any of it would wait for ever
        with pytest.raises(ProtocolError, match="longer than the 512 bytes said of it"):
            await asyncio.wait_for(copy_nar(reader, sink, limit=512), timeout=10)
        assert sum(map(len, chunks)) <= 512
        nar = MAGIC + directory((b"f", regular(b"data")))
        exact = await copy(nar, limit=len(nar))
        assert exact[0].size == len(nar)
        with pytest.raises(ProtocolError, match=f"longer than the {len(nar) - 1} bytes"):
            await copy(nar, limit=len(nar) - 1)

    asyncio.run(main())


def test_truncated_nar_at_every_cut_point() -> None:
    nar = MAGIC + directory(
        (b"exe", regular(b"#!/bin/sh\n", executable=True)),
        (b"link", s(b"(") + s(b"type") + s(b"symlink") + s(b"target") + s(b"exe") + s(b")")),
        (b"sub", directory((b"f", regular(b"abc")))),
    )

    async def main() -> None:
        for cut in range(len(nar)):
            with pytest.raises(ProtocolError, match=r"NAR stream ended at byte \d+") as info:
                await copy(nar[:cut])
            assert f"ended at byte {cut} " in str(info.value)

    asyncio.run(main())


def test_truncated_real_nar(tree: Path) -> None:
    nar = dump_nar(tree)

    async def main() -> None:
        for cut in [*range(0, 200, 7), len(nar) // 2, len(nar) - 1]:
            with pytest.raises(ProtocolError, match="stream ended"):
                await copy(nar[:cut])

    asyncio.run(main())


def malformed(nar: bytes, match: str) -> ProtocolError:
    with pytest.raises(ProtocolError, match=match) as info:
        copy_sync(nar)
    assert "\n" not in str(info.value)
    return info.value


def test_non_zero_padding() -> None:
    bad_magic_pad = bytearray(MAGIC + regular(b"abc"))
    bad_magic_pad[22] = 1  # "nix-archive-1" is 13 bytes: padding at 21..23
    assert "at byte 21:" in str(malformed(bytes(bad_magic_pad), "non-zero padding"))

    good = MAGIC + regular(b"abc")
    padded = bytearray(good)
    contents_pad = good.index(b"abc") + 3
    padded[contents_pad + 4] = 0xFF
    error = malformed(bytes(padded), "non-zero padding after the file contents")
    assert f"at byte {contents_pad}:" in str(error)


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        ([b"b", b"a"], "'a' is not after 'b'"),
        ([b"a", b"a"], "'a' is not after 'a'"),
        ([b"a", b"B"], "'B' is not after 'a'"),  # byte order, not case-insensitive
        ([b"ab", b"a"], "'a' is not after 'ab'"),
        ([b""], "invalid entry name ''"),
        ([b"."], "invalid entry name '.'"),
        ([b".."], "invalid entry name '..'"),
        ([b"a/b"], "invalid entry name 'a/b'"),
        ([b"a\0b"], "invalid entry name"),
    ],
)
def test_bad_directory_entries(entries: list[bytes], match: str) -> None:
    nar = MAGIC + directory(*((name, regular(b"")) for name in entries))
    malformed(nar, match)


def test_unsorted_entry_offset() -> None:
    first = s(b"entry") + s(b"(") + s(b"name") + s(b"b") + s(b"node") + regular(b"") + s(b")")
    head = MAGIC + s(b"(") + s(b"type") + s(b"directory") + first
    offset = len(head + s(b"entry") + s(b"(") + s(b"name"))
    error = malformed(MAGIC + directory((b"b", regular(b"")), (b"a", regular(b""))), "sorted")
    assert f"at byte {offset}:" in str(error)


@pytest.mark.parametrize(
    ("nar", "match"),
    [
        (s(b"nix-archive-2") + regular(b""), "expected the NAR magic 'nix-archive-1'"),
        (s(b"NIXE"), "the NAR magic"),
        (MAGIC + s(b"[") + s(b"type") + s(b"regular"), r"at byte 24: expected .* '\('"),
        (MAGIC + s(b"(") + s(b"tipe"), "found 'tipe'"),
        (MAGIC + s(b"(") + s(b"type") + s(b"fifo") + s(b")"), "'regular', 'symlink' or 'dir"),
        (
            MAGIC + s(b"(") + s(b"type") + s(b"regular") + s(b"executable") + s(b"yes"),
            "executable marker's value '', found 'yes'",
        ),
        (MAGIC + s(b"(") + s(b"type") + s(b"regular") + s(b")"), "expected 'contents'"),
        (
            MAGIC + s(b"(") + s(b"type") + s(b"regular") + s(b"executable") + s(b"") + s(b")"),
            "expected 'contents', found '\\)'",
        ),
        (
            MAGIC + s(b"(") + s(b"type") + s(b"symlink") + s(b"contents") + s(b"x"),
            "expected a symlink's 'target'",
        ),
        (
            MAGIC + s(b"(") + s(b"type") + s(b"directory") + s(b"contents"),
            "expected 'entry' or '\\)' in a directory, found 'contents'",
        ),
        (
            MAGIC + s(b"(") + s(b"type") + s(b"directory") + s(b"entry") + s(b"(") + s(b"node"),
            "expected a directory entry's 'name', found 'node'",
        ),
        (MAGIC + regular(b"a")[:-16] + s(b"extra"), "regular file's closing .*found 'extra'"),
        (
            MAGIC
            + s(b"(")
            + s(b"type")
            + s(b"directory")
            + s(b"entry")
            + s(b"(")
            + s(b"name")
            + s(b"f")
            + s(b"node")
            + regular(b"")
            + s(b"entry"),
            "directory entry's closing",
        ),
        (MAGIC + struct.pack("<Q", 1 << 40), "claims 1099511627776 bytes"),
    ],
)
def test_grammar_violations(nar: bytes, match: str) -> None:
    malformed(nar, match)


def test_chunk_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        copy_sync(MAGIC + regular(b""), chunk=0)


VALID = MAGIC + directory(
    (b"bin", directory((b"tool", regular(b"#!/bin/sh\n", executable=True)))),
    (b"data", regular(b"0123456789" * 3)),
    (b"link", s(b"(") + s(b"type") + s(b"symlink") + s(b"target") + s(b"bin/tool") + s(b")")),
)


@settings(max_examples=300)
@given(st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=3))
def test_mutated_nar_only_raises_protocol_error(mutations: list[tuple[int, int]]) -> None:
    data = bytearray(VALID)
    for position, value in mutations:
        data[position % len(data)] = value

    async def main() -> None:
        try:
            stats, chunks, _ = await copy(bytes(data))
        except ProtocolError:
            return
        # A mutation the grammar accepts must still be forwarded and measured exactly.
        consumed = bytes(data[: stats.size])
        assert b"".join(chunks) == consumed
        assert stats.sha256 == hashlib.sha256(consumed).hexdigest()

    asyncio.run(main())


@given(st.binary(max_size=200))
def test_random_bytes_only_raise_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        copy_sync(data)
    with pytest.raises(ProtocolError):
        copy_sync(MAGIC + data)
