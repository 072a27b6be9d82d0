"""ServeClient against real ``nix-store --serve --write`` processes (Nix 2.8).

Copies go from the host store into a fresh chroot store (``--store <dir>``); builds run in the
host store, because Nix cannot build in a chroot store without a sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import pytest

from offload.errors import RemoteError
from offload.protocol.serve import (
    BuildStatus,
    ServeClient,
    copy_paths,
    topo_sort_infos,
)
from offload.store.drv import read_derivation

T = TypeVar("T")
NO_SUBST = ["--option", "substituters", ""]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def sh(*argv: str, cwd: Path | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=cwd)
    return done.stdout.strip()


@contextlib.asynccontextmanager
async def serve(
    store: Path | None = None, on_log: Callable[[str], None] | None = None
) -> AsyncIterator[ServeClient]:
    """A handshaken client on a fresh ``nix-store --serve --write``; the process always dies."""
    argv = ["nix-store", "--serve", "--write"]
    if store is not None:
        argv += ["--store", str(store)]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    client = ServeClient(
        proc.stdout, proc.stdin, stderr=proc.stderr, on_log=on_log, name=" ".join(argv)
    )
    try:
        assert await client.handshake() == 0x207
        yield client
    finally:
        await client.close()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


@dataclass(frozen=True)
class HostPaths:
    added: str  # from `nix-store --add`, no references
    dep: str  # a built output
    top: str  # a built output referencing dep


@pytest.fixture(scope="module")
def host_paths(tmp_path_factory: pytest.TempPathFactory) -> HostPaths:
    tmp = tmp_path_factory.mktemp("host")
    salt = uuid.uuid4().hex[:12]
    (tmp / f"offload-serve-{salt}.txt").write_text(f"added {salt}\n")
    added = sh("nix-store", "--add", str(tmp / f"offload-serve-{salt}.txt"))
    (tmp / "top.nix").write_text(
        f"""
        let
          mk = name: script: derivation {{
            name = "offload-serve-${{name}}-{salt}";
            system = builtins.currentSystem;
            builder = "/bin/sh";
            args = [ "-c" script ];
          }};
          dep = mk "dep" "echo dep > $out";
        in {{
          inherit dep;
          top = mk "top" "/bin/mkdir $out; echo ${{dep}} > $out/ref; /bin/ln -s ${{dep}} $out/link";
        }}
        """
    )
    built = sh(
        "nix-build", *NO_SUBST, "--no-out-link", str(tmp / "top.nix"), "-A", "dep", "-A", "top"
    )
    dep, top = built.splitlines()
    return HostPaths(added=added, dep=dep, top=top)


@pytest.fixture
def chroot(tmp_path: Path) -> Path:
    return tmp_path / "root"


def test_fresh_chroot_store_handshake_and_missing_path(chroot: Path) -> None:
    async def go() -> None:
        async with serve(chroot) as client:
            missing = "/nix/store/00000000000000000000000000000000-offload-missing"
            assert await client.query_valid_paths([missing]) == set()
            assert await client.query_path_infos([missing]) == {}

    run(go())


def test_copy_closure_into_chroot_store(host_paths: HostPaths, chroot: Path) -> None:
    roots = [host_paths.top, host_paths.added]

    async def go() -> None:
        async with serve() as host, serve(chroot) as remote:
            closure = await host.query_closure(roots)
            assert closure == {host_paths.top, host_paths.dep, host_paths.added}
            infos = await host.query_path_infos(closure)
            assert infos[host_paths.top].references == (host_paths.dep,)
            ordered = topo_sort_infos(infos)
            assert await remote.query_valid_paths(closure) == set()

            moved = await copy_paths(host, remote, ordered)

            assert moved == sum(i.nar_size for i in ordered)
            assert await remote.query_valid_paths(closure) == closure
            copied = await remote.query_path_infos(closure)
            for path, info in infos.items():
                assert copied[path].nar_hash == info.nar_hash
                assert copied[path].nar_size == info.nar_size
                assert copied[path].references == info.references
            chunks: list[bytes] = []

            async def sink(chunk: bytes) -> None:
                chunks.append(chunk)

            size = await remote.dump_store_path(host_paths.top, sink)
            # The same connections keep working after streaming.
            assert await host.query_valid_paths([host_paths.dep]) == {host_paths.dep}
        original = subprocess.run(
            ["nix-store", "--dump", host_paths.top], capture_output=True, check=True
        ).stdout
        assert b"".join(chunks) == original
        assert size == len(original)

    run(go())


async def _nar_from(client: ServeClient, path: str) -> bytes:
    chunks: list[bytes] = []

    async def sink(chunk: bytes) -> None:
        chunks.append(chunk)

    await client.dump_store_path(path, sink)
    return b"".join(chunks)


def _pusher(nar: bytes) -> Callable[[Callable[[bytes], Any]], Coroutine[Any, Any, None]]:
    async def push(sink: Callable[[bytes], Any]) -> None:
        await sink(nar)

    return push


def test_add_with_missing_reference_is_refused(host_paths: HostPaths, chroot: Path) -> None:
    async def go() -> None:
        async with serve() as host:
            info = (await host.query_path_infos([host_paths.top]))[host_paths.top]
            nar = await _nar_from(host, host_paths.top)
        async with serve(chroot) as remote:
            with pytest.raises(RemoteError) as caught:
                await remote.add_to_store_nar(info, _pusher(nar))
        assert f"path '{host_paths.dep}' is not valid" in caught.value.message
        assert "\x1b" not in caught.value.message
        async with serve(chroot) as remote:
            assert await remote.query_valid_paths([host_paths.top, host_paths.dep]) == set()

    run(go())


def test_add_with_wrong_nar_hash_is_refused(host_paths: HostPaths, chroot: Path) -> None:
    async def go() -> None:
        async with serve() as host:
            info = (await host.query_path_infos([host_paths.added]))[host_paths.added]
            nar = await _nar_from(host, host_paths.added)
        wrong = replace(info, nar_hash=hashlib.sha256(nar + b"x").hexdigest())
        async with serve(chroot) as remote:
            with pytest.raises(RemoteError, match="hash mismatch"):
                await remote.add_to_store_nar(wrong, _pusher(nar))
        async with serve(chroot) as remote:
            assert await remote.query_valid_paths([host_paths.added]) == set()
            # The right hash is accepted on a fresh connection: the refusal was about the hash.
            await remote.add_to_store_nar(info, _pusher(nar))
            assert await remote.query_valid_paths([host_paths.added]) == {host_paths.added}

    run(go())


def test_pipelined_adds_register_each_path_whole_or_not_at_all(
    host_paths: HostPaths, chroot: Path
) -> None:
    """Every request is sent before any reply is read: the first path is registered, the second
    (a wrong hash) is refused with Nix's own message, and nothing after it is registered."""

    async def go() -> None:
        async with serve() as host:
            infos = await host.query_path_infos([host_paths.dep, host_paths.top])
            nars = {p: await _nar_from(host, p) for p in infos}
        dep, top = infos[host_paths.dep], infos[host_paths.top]
        wrong = replace(top, nar_hash=hashlib.sha256(b"x").hexdigest())
        async with serve(chroot) as remote:
            items = [(dep, _pusher(nars[dep.path])), (wrong, _pusher(nars[top.path]))]
            with pytest.raises(RemoteError, match="hash mismatch"):
                await remote.add_to_store_nars(items)
        async with serve(chroot) as remote:
            valid = await remote.query_valid_paths([dep.path, top.path])
            assert valid == {dep.path}
            await remote.add_to_store_nars([(top, _pusher(nars[top.path]))])
            assert await remote.query_valid_paths([top.path]) == {top.path}

    run(go())


def test_import_paths_export_stream(host_paths: HostPaths, chroot: Path) -> None:
    export = subprocess.run(
        ["nix-store", "--export", host_paths.dep, host_paths.top], capture_output=True, check=True
    ).stdout

    async def go() -> None:
        async with serve(chroot) as remote:
            await remote.import_paths(_pusher(export))
            valid = await remote.query_valid_paths([host_paths.dep, host_paths.top])
            assert valid == {host_paths.dep, host_paths.top}

    run(go())


def _instantiate(tmp_path: Path, script: str) -> str:
    salt = uuid.uuid4().hex[:12]
    expr = tmp_path / "drv.nix"
    expr.write_text(
        f"""
        derivation {{
          name = "offload-serve-build-{salt}";
          system = builtins.currentSystem;
          builder = "/bin/sh";
          args = [ "-c" {json.dumps(script)} ];
        }}
        """
    )
    return sh("nix-instantiate", str(expr))


def _valid(path: str) -> bool:
    done = subprocess.run(["nix-store", "--check-validity", path], capture_output=True, check=False)
    return done.returncode == 0


def test_build_derivation_then_already_valid(tmp_path: Path) -> None:
    drv_path = _instantiate(tmp_path, "echo hello > $out")
    drv = read_derivation(drv_path)
    out = drv.outputs["out"].path
    assert not _valid(out)

    async def go() -> None:
        async with serve() as host:
            first = await host.build_derivation(drv_path, drv)
            assert first.status is BuildStatus.BUILT
            assert first.success
            assert first.times_built == 1
            assert first.start_time <= first.stop_time
            assert first.built_outputs == {"out": out}
            second = await host.build_derivation(drv_path, drv)
            assert second.status is BuildStatus.ALREADY_VALID
            assert second.built_outputs == {"out": out}

    run(go())
    assert _valid(out)
    assert Path(out).read_text() == "hello\n"


def test_failing_build_reports_status_and_log(tmp_path: Path) -> None:
    marker = f"offload-marker-{uuid.uuid4().hex[:8]}"
    drv_path = _instantiate(tmp_path, f"echo {marker} >&2; exit 3")
    drv = read_derivation(drv_path)
    lines: list[str] = []

    async def go() -> None:
        async with serve(on_log=lines.append) as host:
            result = await host.build_derivation(drv_path, drv)
            assert result.status is BuildStatus.PERMANENT_FAILURE
            assert not result.success
            assert "\x1b" not in result.error_msg
            assert f"builder for '{drv_path}' failed with exit code 3" in result.error_msg
            assert result.built_outputs == {}
            # A failed build leaves the connection usable.
            assert await host.query_valid_paths([drv.outputs["out"].path]) == set()

    run(go())
    assert marker in lines
