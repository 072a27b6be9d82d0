"""send_closure between two in-memory stores (the real ServeClient against FakeStore): what
it copies, and how many questions it asks the destination."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import pytest

from offload.errors import ProtocolError
from offload.scheduler.run import send_closure
from offload.transport.fake import FakePath, FakeStore, store_path

GUARD = 10.0  # seconds; only a guard against hangs

A = store_path("a")
B = store_path("b")  # refers to A
LEAF = store_path("leaf")  # refers to nothing


def _paths() -> list[FakePath]:
    return [
        FakePath.from_text(A, "a\n"),
        FakePath.from_text(B, "b\n", references=[A]),
        FakePath.from_text(LEAF, "leaf\n"),
    ]


def _copy(
    src_store: FakeStore,
    dst_store: FakeStore,
    paths: list[str],
    monkeypatch: pytest.MonkeyPatch,
    *,
    builder: bool = False,
) -> tuple[int, list[set[str]]]:
    """send_closure(paths); the bytes moved and each set of paths dst was asked about
    (``builder``: from a builder, vetted and held whole)."""
    asked: list[set[str]] = []

    async def go() -> int:
        async with src_store.connect() as src, dst_store.connect() as dst:
            real = dst.query_valid_paths

            async def counted(paths: Iterable[str], **kwargs: bool) -> set[str]:
                paths = set(paths)
                asked.append(paths)
                return await real(paths, **kwargs)

            monkeypatch.setattr(dst, "query_valid_paths", counted)
            vet = _passed if builder else None
            return await send_closure(src, dst, paths, vet=vet)  # type: ignore[arg-type]

    moved = asyncio.run(asyncio.wait_for(go(), GUARD))
    return moved, asked


def test_a_leaf_is_copied_after_one_question_to_the_destination(monkeypatch):
    src, dst = FakeStore("src", _paths()), FakeStore("dst")
    moved, asked = _copy(src, dst, [LEAF], monkeypatch)
    assert dst.received == [LEAF]
    assert moved == src.paths[LEAF].info().nar_size
    assert asked == [{LEAF}]


@pytest.mark.parametrize("builder", [False, True])
def test_the_closure_beyond_the_asked_paths_is_asked_about_and_only_the_missing_copied(
    monkeypatch, builder
):
    # From a builder too: what it gives is held whole without one more question here.
    src, dst = FakeStore("src", _paths()), FakeStore("dst", [FakePath.from_text(A, "a\n")])
    _, asked = _copy(src, dst, [B], monkeypatch, builder=builder)
    assert asked == [{B}, {A}]
    assert dst.received == [B]


def test_a_closure_missing_whole_is_copied_in_dependency_order(monkeypatch):
    src, dst = FakeStore("src", _paths()), FakeStore("dst")
    _copy(src, dst, [B, LEAF], monkeypatch)
    assert dst.received.index(A) < dst.received.index(B)
    assert set(dst.received) == {A, B, LEAF}


def test_nothing_is_copied_when_the_destination_has_it(monkeypatch):
    src, dst = FakeStore("src", _paths()), FakeStore("dst", _paths())
    moved, asked = _copy(src, dst, [B], monkeypatch)
    assert (moved, dst.received, asked) == (0, [], [{B}])


async def _passed(infos: object) -> object:
    return infos


def _from_builder(src_store: FakeStore, dst_store: FakeStore, paths: list[str]) -> int:
    """send_closure(paths) from a builder (a vet given, as for every builder's copy)."""

    async def go() -> int:
        async with src_store.connect() as src, dst_store.connect() as dst:
            return await send_closure(src, dst, paths, vet=_passed)  # type: ignore[arg-type]

    return asyncio.run(asyncio.wait_for(go(), GUARD))


def test_a_builder_that_leaves_out_what_it_is_asked_for_is_at_fault(monkeypatch):
    # A store leaves out what it does not hold: a builder that answers QueryClosure without
    # the path asked (Nix errs there, a lying builder need not) made the copy "succeed" with
    # nothing copied, the output found missing here later with no builder to blame.
    src, dst = FakeStore("b1", [FakePath.from_text(LEAF, "leaf\n")]), FakeStore("local")

    async def go() -> int:
        async with src.connect() as builder, dst.connect() as local:

            async def without(paths: Iterable[str]) -> set[str]:
                return set()

            monkeypatch.setattr(builder, "query_closure", without)
            return await send_closure(builder, local, [LEAF], vet=_passed)  # type: ignore[arg-type]

    with pytest.raises(ProtocolError, match=rf"^b1: does not hold '{LEAF}'") as raised:
        asyncio.run(asyncio.wait_for(go(), GUARD))
    assert raised.value.peer == "b1"
    assert dst.received == []


def test_a_builder_whose_path_refers_to_what_it_does_not_send_is_at_fault():
    # B refers to A, which the builder left out of the closure it gave: this host's import
    # refused B ("path ... is not valid"), and the fault was this host's store's.
    src = FakeStore("b1", [FakePath.from_text(B, "b\n", references=[A])])  # no A
    dst = FakeStore("local")
    with pytest.raises(ProtocolError, match=rf"^b1: does not hold '{A}'") as raised:
        _from_builder(src, dst, [B])
    assert raised.value.peer == "b1"
    assert dst.received == []
    dst_with_a = FakeStore("local", [FakePath.from_text(A, "a\n")])  # held here: fine
    _from_builder(src, dst_with_a, [B])
    assert dst_with_a.received == [B]
