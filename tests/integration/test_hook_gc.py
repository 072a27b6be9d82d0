"""offload-hook bringing outputs home while Nix's real garbage collector runs
(``offload.hook.home``, ``offload.hook.temproots``): a dependency renamed into place and not yet
registered, and a temporary tree, both survive a ``nix-store --gc`` that starts meanwhile
(reading the hook's roots file) or that was already running (told over its socket), and the
store stays consistent (``nix-store --verify --check-contents``).

A collection deletes every unrooted path of the store it runs on, so each test has a store of
its own (``NIX_STORE_DIR``, ``NIX_STATE_DIR``), where a garbage path shows that the collection
did delete what it could. The builder's side is a stand-in serving NARs that ``nix-store
--dump`` made; the hook is paused through the functions it calls (``_restore``, ``_register``),
and the running collection through Nix's own synchronisation point (``_NIX_TEST_GC_SYNC``, a
FIFO it reads once it holds its lock, listens on its socket and has read the roots files)."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from offload.hook import home
from offload.protocol.records import PathInfo
from offload.store.nar import nar_hash_nix32
from offload.store.path import nix32_encode
from tests.helpers.offload_run import wait_for


class NarSource:
    """Serves each path's NAR as a builder's store session would."""

    def __init__(self, nars: dict[str, bytes]) -> None:
        self.nars = nars

    async def dump_store_path(
        self, path: str, sink: Callable[[bytes], Awaitable[None]], *, limit: int | None = None
    ) -> int:
        del limit  # the NARs served are whole
        await sink(self.nars[path])
        return len(self.nars[path])


@dataclass
class Store:
    root: Path
    dir: str
    state: Path
    garbage: str


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    # Short: the collector's socket path must fit in sun_path (108 bytes).
    root = Path(tempfile.mkdtemp(prefix="offload-gc-", dir="/tmp"))
    (root / "etc").mkdir()
    (root / "etc" / "nix.conf").write_text("build-users-group =\n")
    for name, value in {
        "NIX_STORE_DIR": root / "store",
        "NIX_STATE_DIR": root / "var",
        "NIX_LOG_DIR": root / "log",
        "NIX_CONF_DIR": root / "etc",
        "NIX_REMOTE": "local",
    }.items():
        monkeypatch.setenv(name, str(value))
    (root / "junk").write_text("garbage\n")
    garbage = _nix_store("--add", str(root / "junk")).strip()
    yield Store(root, str(root / "store"), root / "var", garbage)
    shutil.rmtree(root)


def _nix_store(*args: str) -> str:
    return subprocess.run(["nix-store", *args], capture_output=True, text=True, check=True).stdout


def _paths(store: Store, tmp_path: Path) -> tuple[list[PathInfo], NarSource]:
    """An output of several MiB (restored by ``nix-store --restore``) and a small dependency
    of it (unpacked in Python), neither valid here."""
    nars: dict[str, bytes] = {}
    infos: list[PathInfo] = []
    for name, size in (("dep", 4096), ("out", 3 << 20)):
        tree = tmp_path / name
        tree.mkdir()
        (tree / "data").write_bytes(os.urandom(size))
        nar = subprocess.run(
            ["nix-store", "--dump", str(tree)], capture_output=True, check=True
        ).stdout
        path = f"{store.dir}/{nix32_encode(os.urandom(20))}-offload-gc-{name}"
        refs = tuple(info.path for info in infos)
        digest = nar_hash_nix32(hashlib.sha256(nar).hexdigest())
        infos.append(PathInfo(path, None, refs, len(nar), digest))
        nars[path] = nar
    return infos, NarSource(nars)


def _assert_whole(store: Store, infos: list[PathInfo]) -> None:
    assert not Path(store.garbage).exists()  # the collection did delete what was garbage
    for info in infos:
        assert (Path(info.path) / "data").exists()
        _nix_store("--verify-path", info.path)
    verify = subprocess.run(
        ["nix-store", "--verify", "--check-contents"], capture_output=True, text=True, check=False
    )
    assert verify.returncode == 0, verify.stderr
    assert not [p.name for p in Path(store.dir).iterdir() if home.TEMP_MARK in p.name]
    assert not list((store.state / "temproots").glob(f"{os.getpid()}-*"))  # roots let go


def test_a_collection_starting_before_the_registration_keeps_every_path(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both paths renamed into place, invalid until registered: what a collection deletes
    # unless they are rooted (the hook then failed: "cannot register outputs: error: getting
    # status of '...-offload-gc-dep': No such file or directory").
    infos, source = _paths(store, tmp_path)
    placed, release = asyncio.Event(), asyncio.Event()
    real_register = home._register

    async def held_back(batch: list[PathInfo]) -> None:
        placed.set()
        await release.wait()
        await real_register(batch)

    monkeypatch.setattr(home, "_register", held_back)

    async def go() -> None:
        held = {info.path for info in infos}
        bringing = asyncio.create_task(home.import_outputs(source, infos, store.dir, held=held))  # type: ignore[arg-type]
        await placed.wait()
        await asyncio.to_thread(_nix_store, "--gc")
        release.set()
        await bringing

    asyncio.run(go())
    _assert_whole(store, infos)


def test_a_collection_already_running_is_told_and_keeps_the_temporaries(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The collector holds its lock and has read the roots files: the roots go to its socket.
    # Paused with the dependency renamed into place and the output's tree restored under its
    # temporary name, not yet renamed.
    infos, source = _paths(store, tmp_path)
    restored, release = asyncio.Event(), asyncio.Event()
    real_restore = home._restore

    async def held_back(remote: NarSource, info: PathInfo, temp: Path) -> None:
        await real_restore(remote, info, temp)  # type: ignore[arg-type]
        if info.path == infos[-1].path:
            restored.set()
            await release.wait()

    monkeypatch.setattr(home, "_restore", held_back)
    sync = store.root / "gc-sync"
    os.mkfifo(sync)
    env = {**os.environ, "_NIX_TEST_GC_SYNC": str(sync)}
    argv = ["nix-store", "--gc", "--debug"]
    gc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)

    async def go() -> None:
        # Opened once the collector reads it: it holds its lock and listens on its socket.
        waiting_collector = await asyncio.to_thread(_opened_by_reader, sync, gc)
        held = {info.path for info in infos}
        bringing = asyncio.create_task(home.import_outputs(source, infos, store.dir, held=held))  # type: ignore[arg-type]
        await restored.wait()
        os.close(waiting_collector)  # it goes on: deletes what it finds unrooted
        _, err = await asyncio.to_thread(gc.communicate)
        assert gc.returncode == 0, err
        for info in infos:
            assert f"got new GC root '{info.path}'" in err  # over its socket
        release.set()
        await bringing

    try:
        asyncio.run(go())
    finally:
        gc.kill()
        gc.wait()
    _assert_whole(store, infos)


def _opened_by_reader(fifo: Path, proc: subprocess.Popen[str]) -> int:
    """``fifo`` opened for writing once ``proc`` opens it to read; a collector that ends
    without (a Nix that reads other variables, as 2.35 does) fails the test, never hangs it."""
    opened: list[int] = []

    def reader_came() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"nix-store --gc ended without reading {fifo}")
        try:
            opened.append(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # no reader yet
                raise
            return False
        return True

    wait_for(reader_came, 60, f"nix-store --gc to read {fifo}")
    return opened[0]


_ROOT_ON_A_FULL_DISK = """
import asyncio, sys
from pathlib import Path
from offload.errors import StoreError
from offload.hook.temproots import TempRoots
try:
    asyncio.run(TempRoots(Path(sys.argv[1])).add(["/nix/store/" + "0" * 32 + "-x"]))
except StoreError as exc:
    print("StoreError:", exc.message)
"""


def test_a_roots_file_on_a_full_disk_is_an_error_naming_it(tmp_path: Path) -> None:
    # The roots file opens (a tmpfs has inodes left), and its record cannot be written: that
    # came out as "[Errno 28] No space left on device", naming no file, and not a StoreError.
    state = tmp_path / "var"
    state.mkdir()
    fill = f"mount -t tmpfs -o size=4k tmpfs {state} && (cat /dev/zero > {state}/fill || true)"
    run = f'{fill} 2>/dev/null && exec {sys.executable} -c "$0" {state}'
    argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", run, _ROOT_ON_A_FULL_DISK]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    said = done.stdout.strip()
    assert said.startswith(f"StoreError: {state}/temproots/"), said
    assert said.endswith(
        ": No space left on device (keeping Nix's garbage collector from the paths being "
        "brought home)"
    ), said
