"""Store paths, a derivation and stores for tests of the in-memory serve server
(offload.transport.fake): a chain of paths that refer to each other, the hello derivation and a
builder's store holding its source, and a path's NAR read back through a client."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from offload.protocol.serve import ServeClient
from offload.store.drv import Derivation, DerivationOutput
from offload.transport.fake import FakePath, FakeStore, store_path

__all__ = [
    "DEV",
    "DRV",
    "GUARD",
    "OUT",
    "SRC",
    "A",
    "B",
    "C",
    "D",
    "builder_store",
    "chain",
    "hello",
    "nar_of",
    "run",
]

T = TypeVar("T")
GUARD = 10.0  # seconds; only a guard against hangs, never waited out by a passing test

A = store_path("a")
B = store_path("b")  # refers to A
C = store_path("c")  # refers to B and itself
D = store_path("d")  # unrelated
SRC = store_path("src")
DRV = store_path("hello-1.0.drv")
OUT = store_path("hello-1.0")
DEV = store_path("hello-1.0-dev")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, GUARD))


def chain() -> list[FakePath]:
    return [
        FakePath.from_text(A, "a\n"),
        FakePath.from_text(B, "b\n", references=[A]),
        FakePath.from_text(C, "c\n", references=[B, C], deriver=DRV),
        FakePath.from_text(D, "d\n"),
    ]


def hello(*, inputs: tuple[str, ...] = (SRC,)) -> Derivation:
    return Derivation.create(
        outputs={
            "out": DerivationOutput(OUT, "", ""),
            "dev": DerivationOutput(DEV, "", ""),
        },
        input_drvs={},
        input_srcs=inputs,
        platform="x86_64-linux",
        builder="/bin/sh",
        args=("-c", "echo hi > $out"),
        env={"name": "hello-1.0", "out": OUT, "dev": DEV},
    )


def builder_store(**kwargs: Any) -> FakeStore:
    return FakeStore("b1", [FakePath.from_text(SRC, "source\n")], **kwargs)


async def nar_of(client: ServeClient, path: str) -> bytes:
    chunks: list[bytes] = []

    async def sink(chunk: bytes) -> None:
        chunks.append(chunk)

    await client.dump_store_path(path, sink)
    return b"".join(chunks)
