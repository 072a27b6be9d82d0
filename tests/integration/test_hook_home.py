"""offload-hook bringing outputs home (``offload.hook.home``) into this host's real store, from
a NAR that ``nix-store --dump`` made: a build cancelled while ``nix-store --register-validity``
runs (a Ctrl-C, the hook's Nix gone) waits for it, and what it registered stays on disk; a path
that is no output of the derivation is never brought home (tests/integration/test_hook_strays.py
under real nix-build).

The builder's side is a stand-in that serves that NAR (the seam: the thing under test is the
local store's registration); everything on the local side is the real Nix."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from typing_extensions import override

from offload.errors import StoreError
from offload.hook import home
from offload.protocol.records import PathInfo
from offload.store.nar import nar_hash_nix32
from offload.store.path import STORE_DIR, nix32_encode


class NarSource:
    """Serves one path's NAR as a builder's store session would."""

    def __init__(self, nar: bytes) -> None:
        self.nar = nar

    async def dump_store_path(
        self, path: str, sink: Callable[[bytes], Awaitable[None]], *, limit: int | None = None
    ) -> int:
        del path
        assert limit == len(self.nar)  # held to the narSize the builder said
        await sink(self.nar)
        return len(self.nar)


@pytest.fixture
def output(tmp_path: Path) -> Iterator[tuple[PathInfo, NarSource]]:
    """A made-up output path (deleted from the store after the test) and its NAR."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "file").write_text(f"{uuid.uuid4()}\n")
    nar = subprocess.run(["nix-store", "--dump", str(tree)], capture_output=True, check=True).stdout
    name = nix32_encode(os.urandom(20))
    path = f"{STORE_DIR}/{name}-offload-hook-home-test"
    info = PathInfo(path, None, (), len(nar), nar_hash_nix32(hashlib.sha256(nar).hexdigest()))
    yield info, NarSource(nar)
    subprocess.run(["nix-store", "--delete", path], capture_output=True, check=False)


def _valid(path: str) -> bool:
    done = subprocess.run(["nix-store", "--check-validity", path], capture_output=True, check=False)
    return done.returncode == 0


def test_a_build_cancelled_while_its_outputs_register_keeps_them_whole(
    output: tuple[PathInfo, NarSource], monkeypatch: pytest.MonkeyPatch
) -> None:
    info, source = output
    registered, release = asyncio.Event(), asyncio.Event()
    real_register = home._register

    async def slow_to_answer(infos: list[PathInfo]) -> None:
        await real_register(infos)  # committed: nix-store has not answered us yet
        registered.set()
        await release.wait()

    monkeypatch.setattr(home, "_register", slow_to_answer)

    async def go() -> None:
        bringing = asyncio.create_task(home.import_outputs(source, [info], held={info.path}))  # type: ignore[arg-type]
        await registered.wait()
        bringing.cancel()  # Ctrl-C, or the hook's Nix gone
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await bringing

    asyncio.run(go())
    assert _valid(info.path)
    assert (Path(info.path) / "file").exists()
    verify = subprocess.run(
        ["nix-store", "--verify-path", info.path], capture_output=True, check=False
    )
    assert verify.returncode == 0, verify.stderr


def test_a_build_cancelled_while_its_outputs_arrive_leaves_nothing(
    output: tuple[PathInfo, NarSource],
) -> None:
    info, source = output
    arriving = asyncio.Event()

    class Stalled(NarSource):
        @override
        async def dump_store_path(
            self, path: str, sink: Callable[[bytes], Awaitable[None]], *, limit: int | None = None
        ) -> int:
            await sink(self.nar[:8])
            arriving.set()
            await asyncio.Event().wait()  # the builder goes quiet mid-NAR
            return 0

    async def go() -> None:
        stalled = Stalled(source.nar)
        bringing = asyncio.create_task(home.import_outputs(stalled, [info], held={info.path}))  # type: ignore[arg-type]
        await arriving.wait()
        bringing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await bringing

    asyncio.run(go())
    assert not _valid(info.path)
    assert not Path(info.path).exists()
    assert not list(Path(STORE_DIR).glob(f"*-{home.TEMP_MARK}{os.getpid()}-*"))


def test_an_output_a_builder_names_outside_the_store_touches_nothing(
    output: tuple[PathInfo, NarSource], tmp_path: Path
) -> None:
    # The path is the builder's word: one outside the store must neither be replaced by the
    # NAR nor removed when its registration fails (the hook runs as root).
    info, source = output
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    forged = PathInfo(str(victim), None, (), info.nar_size, info.nar_hash)
    with pytest.raises(StoreError, match="invalid store path"):
        asyncio.run(home.import_outputs(source, [forged], held={forged.path}))  # type: ignore[arg-type]
    assert victim.read_text() == "precious\n"
    assert not list(Path(STORE_DIR).glob(f"*-{home.TEMP_MARK}{os.getpid()}-*"))


def test_a_path_that_is_no_output_of_the_derivation_is_not_brought_home(
    output: tuple[PathInfo, NarSource],
) -> None:
    # Nix holds the locks of the derivation's outputs only (``held``): any other path is a
    # builder's word, never made valid here.
    info, source = output
    with pytest.raises(StoreError, match="is no output of the derivation: not brought home"):
        asyncio.run(home.import_outputs(source, [info], held=()))  # type: ignore[arg-type]
    assert not _valid(info.path)
    assert not Path(info.path).exists()
