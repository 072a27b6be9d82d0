"""Derivations (.drv) and NARs as a store, a builder or a file on disk may hand them over.

Contracts (``store``, ``hook.unpack``): ``parse_derivation`` returns a ``Derivation`` or raises a
one-line ``StoreError`` naming the byte offset, the same as the cursor parser's, and so do the
derivation's derived attributes (name, features, preferLocalBuild). ``copy_nar`` reads exactly
one NAR or raises a one-line ``ProtocolError``; it streams file contents and holds one token (at
most 64 KiB) otherwise. ``unpack_nar`` writes the tree of one NAR, or raises a one-line
``StoreError`` (and leaves what it wrote to its caller, who owns the fresh directory); it accepts
nothing ``copy_nar`` refuses.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from offload.errors import ProtocolError, StoreError
from offload.hook.unpack import unpack_nar
from offload.protocol.wire import encode_str
from offload.store.drv import Derivation, cursor_parse, parse_derivation, print_derivation
from offload.store.nar import NarStats, copy_nar
from tests.fuzz.support import FUZZ, Stream, bounded_memory, drive, outcome

FIXTURES = Path(__file__).parent.parent / "fixtures" / "drv"
DRVS = sorted(p.read_bytes() for p in FIXTURES.glob("*.drv"))

# -- .drv ----------------------------------------------------------------------------------


def _mutate(data: bytes, at: int, cut: int, insert: bytes) -> bytes:
    at %= len(data) + 1
    return data[:at] + insert + data[at + cut :]


DRV_PIECES = [b'"', b"\\", b",", b"(", b")", b"[", b"]", b'""', b"/", b"Derive(", b"\xff", b"\0"]
drv_inserts = st.lists(st.sampled_from(DRV_PIECES) | st.binary(max_size=6), max_size=6).map(
    b"".join
)
JSON_PIECES = ['{"name":', '"requiredSystemFeatures":', '"preferLocalBuild":', "[", "]", "{",
               "}", "1", "true", '"x"', ",", "1e999", "[" * 3000]  # fmt: skip
structured = st.lists(st.sampled_from(JSON_PIECES), max_size=12).map("".join)


def _check_drv(data: bytes) -> None:
    with bounded_memory(len(data)):
        drv = outcome(lambda: parse_derivation(data), StoreError)
    # The regular-expression reading (``drv_scan``) and the cursor parser agree: on the value,
    # or on the error, which the cursor parser alone gives.
    reference = outcome(lambda: cursor_parse(data), StoreError)
    assert isinstance(drv, Derivation) == isinstance(reference, Derivation)
    if not isinstance(drv, Derivation):
        assert str(drv) == str(reference)
        return
    assert isinstance(reference, Derivation)
    assert drv == reference
    assert [list(m.items()) for m in (drv.outputs, drv.input_drvs, drv.env)] == [
        list(m.items()) for m in (reference.outputs, reference.input_drvs, reference.env)
    ]  # in the same order too: equal mappings need not be
    outcome(lambda: drv.name, StoreError)
    outcome(lambda: drv.required_features, StoreError)
    outcome(lambda: drv.prefer_local_build, StoreError)
    # Printed as Nix prints it (names and paths unescaped), what is read back is again a result.
    outcome(lambda: parse_derivation(print_derivation(drv)), StoreError)


@FUZZ
@given(st.sampled_from(DRVS), st.integers(0, 1 << 16), st.integers(0, 8), drv_inserts)
def test_drv_mutated(data: bytes, at: int, cut: int, insert: bytes) -> None:
    _check_drv(_mutate(data, at, cut, insert))


@FUZZ
@given(st.binary(max_size=400))
def test_drv_bytes(data: bytes) -> None:
    _check_drv(b"Derive(" + data)


@FUZZ
@given(structured, st.booleans())
def test_drv_structured_attrs(text: str, name: bool) -> None:
    env = '("__json",' + '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '")'
    if name:
        env = '("a","b"),' + env
    _check_drv(f'Derive([],[],[],"x86_64-linux","/bin/sh",[],[{env}])'.encode())


# -- NAR -----------------------------------------------------------------------------------

TOKENS = [b"nix-archive-1", b"(", b")", b"type", b"regular", b"symlink", b"directory", b"entry",
          b"name", b"node", b"target", b"contents", b"executable", b"", b"a", b"b", b".", b"..",
          b"a/b", b"x\0", b"n" * 300, b"\xff"]  # fmt: skip


def _tree(depth: int) -> st.SearchStrategy[bytes]:
    leaf = st.one_of(
        st.binary(max_size=20).map(
            lambda c: b"".join(map(encode_str, [b"(", b"type", b"regular", b"contents", c, b")"]))
        ),
        st.sampled_from([b"t", b"/x", b"", b"../.."]).map(
            lambda t: b"".join(map(encode_str, [b"(", b"type", b"symlink", b"target", t, b")"]))
        ),
    )
    if depth == 0:
        return leaf
    entries = st.dictionaries(
        st.sampled_from([b"a", b"b", b"c", b"d"]), _tree(depth - 1), max_size=3
    )
    directory = entries.map(
        lambda d: b"".join(
            [*map(encode_str, [b"(", b"type", b"directory"])]
            + [
                b"".join(map(encode_str, [b"entry", b"(", b"name", n, b"node"]))
                + d[n]
                + encode_str(b")")
                for n in sorted(d)
            ]
            + [encode_str(b")")]
        )
    )
    return st.one_of(leaf, directory)


valid_nars = _tree(3).map(lambda node: encode_str(b"nix-archive-1") + node)
token_nars = st.lists(
    st.sampled_from(TOKENS).map(encode_str) | st.binary(max_size=12), max_size=30
).map(lambda ts: encode_str(b"nix-archive-1") + b"".join(ts))
nars = st.one_of(
    valid_nars,
    token_nars,
    st.tuples(valid_nars, st.integers(0, 1 << 12), st.integers(0, 9), st.binary(max_size=9)).map(
        lambda t: _mutate(*t)
    ),
)

_counter = itertools.count()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("nar")


@FUZZ
@given(data=nars)
def test_nar(scratch: Path, data: bytes) -> None:
    chunks: list[bytes] = []

    async def sink(chunk: bytes) -> None:
        chunks.append(chunk)

    stream = Stream(data + b"TRAILER!")
    with bounded_memory(len(data)):
        copied = outcome(lambda: drive(copy_nar(stream, sink, chunk=64)), ProtocolError)
    dest = scratch / f"out{next(_counter)}"
    unpacked = outcome(lambda: unpack_nar(data, dest), StoreError)
    if not isinstance(copied, NarStats):
        assert isinstance(unpacked, StoreError)
    else:
        # copy_nar stops at the NAR's end; unpack_nar is given one NAR and refuses more bytes.
        assert b"".join(chunks) == data[: copied.size]
        assert stream.data[stream.pos :] == data[copied.size :] + b"TRAILER!"
        # (unpack_nar also refuses what no file system can hold: an empty symlink target.)
        if copied.size < len(data):
            assert isinstance(unpacked, StoreError)
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    elif dest.exists():
        shutil.rmtree(dest)
