"""What a remote store says about paths is checked before anything acts on it: the closure's
paths, and each path info's path, deriver, references and narHash. The hook writes those
fields, a line each, into ``nix-store --register-validity --hash-given`` as root, and every
copy locks, writes and registers by those names; a builder that says anything else broke the
protocol, and its session with it."""

from __future__ import annotations

import pytest

from offload.errors import ProtocolError
from offload.protocol.records import parse_realisation
from offload.protocol.worker.records import read_path_info as read_worker_info
from offload.store.nar import nar_hash_nix32
from tests.helpers.serve_wire import A, B, connected, reader_with, run, s, strs, u64

HASH = "sha256:" + "1" * 52
OTHER = "/nix/store/" + "0" * 31 + "1-bash-5.2-p15"


def _info(*, deriver: str = "", references: tuple[str, ...] = (), nar_hash: str = HASH) -> bytes:
    """A QueryPathInfos reply (serve protocol 2.7) of one path info for A."""
    return (
        s(A) + s(deriver) + strs(*references) + u64(128) + u64(128)
        + s(nar_hash) + s("") + strs() + s("")
    )  # fmt: skip


@pytest.mark.parametrize(
    ("reply", "said"),
    [
        (_info(references=(B, "../../etc/passwd")), "it is not in the store directory"),
        (_info(references=("/nix/store/short-x",)), "is not 32 nix32 characters"),
        # A record of its own after the deriver's line, in --register-validity's text.
        (_info(deriver=f"\n0\n{OTHER}\n{HASH}\n1\n\n0"), "invalid store path"),
        (_info(nar_hash="1" * 64), "its narHash '1111"),
        (_info(nar_hash="sha256:eeee"), "is not sha256:<nix32>"),
    ],
)
def test_a_path_info_with_anything_but_store_paths_and_a_nar_hash_is_refused(
    reply: bytes, said: str
) -> None:
    async def go() -> None:
        client, _ = await connected(reply)
        with pytest.raises(ProtocolError, match="the path info of") as raised:
            await client.query_path_infos([A])
        assert said in raised.value.message
        assert raised.value.message.startswith("b1: ")  # the builder that said it
        with pytest.raises(ProtocolError, match="connection unusable"):
            await client.query_valid_paths([A])

    run(go())


def test_a_path_info_of_store_paths_is_taken_as_said() -> None:
    async def go() -> None:
        client, _ = await connected(_info(deriver=B, references=(A, OTHER)))
        (info,) = (await client.query_path_infos([A])).values()
        assert (info.deriver, info.references, info.nar_hash) == (B, (A, OTHER), HASH)

    run(go())


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", f"{A}/sub", ""])
def test_a_closure_naming_anything_but_store_paths_is_refused(path: str) -> None:
    async def go() -> None:
        client, _ = await connected(strs(A, OTHER, path))
        with pytest.raises(ProtocolError, match=r"^b1: the closure: invalid store path"):
            await client.query_closure([A])

    run(go())


def test_a_closure_of_store_paths_is_taken_as_said() -> None:
    async def go() -> None:
        client, _ = await connected(strs(A, OTHER))
        assert await client.query_closure([A]) == {A, OTHER}

    run(go())


def test_the_daemons_path_info_is_checked_after_its_hash_is_read() -> None:
    # The worker protocol's narHash is base-16 without a prefix, taken into sha256:<nix32>.
    def reply(reference: str) -> bytes:
        return s("") + s("ab" * 32) + strs(reference) + u64(0) + u64(128) + u64(0) + strs() + s("")

    async def go() -> None:
        info = await read_worker_info(reader_with(reply(OTHER)), A, 34)
        assert info.nar_hash == nar_hash_nix32("ab" * 32)
        with pytest.raises(ProtocolError, match="not in the store directory"):
            await read_worker_info(reader_with(reply("/tmp/x")), A, 34)

    run(go())


@pytest.mark.parametrize(
    ("realisation", "said"),
    [
        ('{"outPath": "../../etc/x"}', "invalid store path"),
        ('{"outPath": "/etc/x"}', "not in the store directory"),
        ("[" * 100_000, "malformed realisation"),  # deeper than Python's stack
    ],
)
def test_a_realisation_naming_no_store_path_is_refused(realisation: str, said: str) -> None:
    with pytest.raises(ProtocolError, match=said):
        parse_realisation("sha256:00!out", realisation, "/nix/store")
