"""WorkerClient against real ``nix-daemon --stdio`` processes (Nix 2.8), each on a private store.

Every daemon serves a fresh chroot store (``--store <dir>``); as root with no daemon socket,
``nix-daemon --stdio`` serves that store itself rather than forwarding (Nix 2.8 daemon.cc,
runDaemon). Builds run inside it with the host's /bin, /lib and /usr bound into the build
sandbox, so nothing touches the host store but the inputs the tests instantiate there and copy
over with a ``ServeClient`` on the host, as a scheduler would copy between two builders.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Coroutine
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest

from offload.errors import DaemonError, ProtocolError
from offload.protocol.client import NarProducer, Sink
from offload.protocol.serve import BuildOptions, BuildStatus, ServeClient
from offload.protocol.worker import LogMessage, Verbosity, WorkerClient
from offload.protocol.worker.frames import ActivityStart, Event
from offload.protocol.worker.records import ActivityType, DaemonOptions
from offload.store.drv import read_derivation
from offload.store.nar import nar_hash_nix32

T = TypeVar("T")
DAEMON_OPTIONS = [
    *("--option", "substituters", ""),
    *("--option", "sandbox-paths", " ".join(p for p in ("/bin", "/lib", "/lib64", "/usr"))),
]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def sh(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


@contextlib.asynccontextmanager
async def child(*argv: str) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


@contextlib.asynccontextmanager
async def daemon(store: Path, **kwargs: Any) -> AsyncIterator[WorkerClient]:
    """A handshaken client on a fresh ``nix-daemon --stdio`` serving ``store``."""
    async with child("nix-daemon", "--stdio", "--store", str(store), *DAEMON_OPTIONS) as proc:
        assert proc.stdout is not None
        assert proc.stdin is not None
        client = WorkerClient(proc.stdout, proc.stdin, name=f"daemon {store.name}", **kwargs)
        try:
            yield client
        finally:
            await client.close()


@contextlib.asynccontextmanager
async def host_store() -> AsyncIterator[ServeClient]:
    async with child("nix-store", "--serve", "--write") as proc:
        assert proc.stdout is not None
        assert proc.stdin is not None
        client = ServeClient(proc.stdout, proc.stdin, name="host")
        await client.handshake()
        try:
            yield client
        finally:
            await client.close()


def instantiate(tmp: Path, script: str) -> str:
    """A .drv in the host store whose builder runs ``script`` with two source inputs."""
    salt = uuid.uuid4().hex[:12]
    for name in ("a", "b"):
        (tmp / f"{name}.txt").write_text(f"{name} {salt}\n")
    (tmp / "drv.nix").write_text(
        f"""
        derivation {{
          name = "offload-worker-{salt}";
          system = builtins.currentSystem;
          builder = "/bin/sh";
          a = ./a.txt;
          b = ./b.txt;
          args = [ "-c" ''{script}'' ];
        }}
        """
    )
    return sh("nix-instantiate", str(tmp / "drv.nix"))


async def copy_inputs(host: ServeClient, dst: WorkerClient, paths: list[str]) -> None:
    infos = await host.query_path_infos(paths)
    items = [(infos[p], partial(host.dump_store_path, p)) for p in sorted(infos)]
    await dst.add_multiple_to_store(items)


def test_handshake_negotiates_2_8_and_queries_a_fresh_store(tmp_path: Path) -> None:
    async def go() -> None:
        async with daemon(tmp_path / "root") as client:
            assert await client.handshake() == 0x122
            assert client.minor == 34
            assert client.daemon_nix_version == "2.8.0"
            assert client.trusted is None  # 1.35 and later only
            missing = f"/nix/store/{'0' * 32}-missing"
            assert not await client.is_valid_path(missing)
            assert await client.query_valid_paths([missing]) == set()
            assert await client.query_path_info(missing) is None
            assert client.usable

    run(go())


def test_add_build_and_fetch_the_output(tmp_path: Path) -> None:
    script = (
        'echo "@nix {\\"action\\":\\"setPhase\\",\\"phase\\":\\"buildPhase\\"}" >&2; '
        "echo building-it; read x < $a; echo $x > $out"
    )
    drv_path = instantiate(tmp_path, script)
    drv = read_derivation(drv_path)
    lines: list[str] = []
    phases: list[tuple[str, str]] = []

    async def go() -> None:
        async with (
            host_store() as host,
            daemon(
                tmp_path / "root", on_log=lines.append, on_phase=lambda *p: phases.append(p)
            ) as client,
        ):
            await client.handshake()
            await copy_inputs(host, client, sorted(drv.input_srcs))
            assert await client.query_valid_paths(drv.input_srcs) == set(drv.input_srcs)
            src = await client.query_path_info(min(drv.input_srcs))
            assert src is not None
            assert src.nar_hash.startswith("sha256:")
            result = await client.build_derivation(drv_path, drv)
            assert result.status == BuildStatus.BUILT, result.error_msg
            out = drv.outputs["out"].path
            assert result.built_outputs == {"out": out}
            info = await client.query_path_info(out)
            assert info is not None
            chunks: list[bytes] = []

            async def sink(chunk: bytes) -> None:
                chunks.append(chunk)

            size = await client.dump_store_path(out, sink)
            nar = b"".join(chunks)
            assert size == len(nar) == info.nar_size
            assert nar_hash_nix32(hashlib.sha256(nar).hexdigest()) == info.nar_hash

    run(go())
    assert "building-it" in lines
    assert phases == [(drv_path, "buildPhase")]
    assert (tmp_path / "root" / drv.outputs["out"].path.lstrip("/")).read_text().startswith("a ")


def test_failed_build_is_a_result_and_the_connection_goes_on(tmp_path: Path) -> None:
    drv_path = instantiate(tmp_path, "echo about-to-fail; exit 3")
    drv = read_derivation(drv_path)
    lines: list[str] = []

    async def go() -> None:
        async with host_store() as host, daemon(tmp_path / "root", on_log=lines.append) as client:
            await client.handshake()
            await copy_inputs(host, client, sorted(drv.input_srcs))
            options = BuildOptions(max_silent_time=60)
            result = await client.build_derivation(drv_path, drv, options=options)
            assert result.status == BuildStatus.PERMANENT_FAILURE
            assert "exit code 3" in result.error_msg
            assert client.usable
            assert not await client.is_valid_path(drv.outputs["out"].path)

    run(go())
    assert "about-to-fail" in lines


def test_daemon_refusals_are_daemon_errors(tmp_path: Path) -> None:
    drv_path = instantiate(tmp_path, "true")
    drv = read_derivation(drv_path)
    events: list[Event] = []

    async def go() -> None:
        async with host_store() as host, daemon(tmp_path / "root", on_event=events.append) as c:
            await c.handshake(DaemonOptions(verbosity=Verbosity.INFO))
            # Inputs missing: a failed build, not an error of the connection.
            result = await c.build_derivation(drv_path, drv)
            assert result.status == BuildStatus.MISC_FAILURE
            assert "does not exist" in result.error_msg
            # A NAR whose hash does not match its narHash: refused, nothing registered.
            first = min(drv.input_srcs)
            info = (await host.query_path_infos([first]))[first]
            wrong = replace(info, nar_hash="sha256:" + "0" * 52)
            with pytest.raises(DaemonError, match="hash mismatch") as refused:
                await c.add_to_store_nar(wrong, partial(host.dump_store_path, first))
            assert refused.value.hint is not None
            assert "\x1b" not in refused.value.message
            assert "\n" not in refused.value.message
            assert c.usable
            assert not await c.is_valid_path(first)
            await c.add_to_store_nar(info, partial(host.dump_store_path, first))
            assert await c.is_valid_path(first)

    run(go())
    assert any(isinstance(e, ActivityStart | LogMessage) for e in events)


def test_a_daemon_dying_mid_request_is_a_protocol_error(tmp_path: Path) -> None:
    drv_path = instantiate(tmp_path, "sleep 30")
    drv = read_derivation(drv_path)
    started = asyncio.Event()

    def on_event(event: Event) -> None:
        if isinstance(event, ActivityStart) and event.type == ActivityType.BUILD:
            started.set()

    async def go() -> None:
        async with (
            host_store() as host,
            child(
                "nix-daemon", "--stdio", "--store", str(tmp_path / "root"), *DAEMON_OPTIONS
            ) as proc,
        ):
            assert proc.stdout is not None
            assert proc.stdin is not None
            client = WorkerClient(proc.stdout, proc.stdin, name="doomed", on_event=on_event)
            await client.handshake()
            await copy_inputs(host, client, sorted(drv.input_srcs))
            build = asyncio.create_task(client.build_derivation(drv_path, drv))
            await started.wait()
            os.killpg(proc.pid, signal.SIGKILL)
            with pytest.raises(ProtocolError) as lost:
                await build
            assert not isinstance(lost.value, DaemonError)
            assert lost.value.peer == "doomed"
            assert not client.usable

    run(go())


def test_a_path_another_client_adds_meanwhile_does_not_break_a_multiple_add(
    tmp_path: Path,
) -> None:
    # Two clients of one store: the second finds three paths missing, and while it sends the
    # first, the other client adds the second. The 2.8 daemon skipped that path's NAR and read
    # the third's info from inside it ("not an absolute path: 'nix-archive-1'"): the builder
    # was backed off. The soak campaign met it with two builds on one ssh-ng builder that
    # shared an input, sent at once.
    salt = uuid.uuid4().hex
    paths = []
    for name in ("one", "two", "three"):
        (tmp_path / name).write_text(f"{name} {salt}\n")
        paths.append(sh("nix-store", "--add", str(tmp_path / name)))
    first, second, third = paths

    async def go() -> None:
        async with host_store() as host, daemon(tmp_path / "root") as other:
            # The first daemon makes the fresh store before the second opens it: two making it
            # at once, one exited before its handshake now and then.
            await other.handshake()
            async with daemon(tmp_path / "root") as client:
                await client.handshake()
                await add_racing(host, other, client)

    async def add_racing(host: ServeClient, other: WorkerClient, client: WorkerClient) -> None:
        infos = await host.query_path_infos(paths)

        async def first_nar(sink: Sink) -> None:
            # The second is added by the other client before this one gets to it.
            await other.add_to_store_nar(infos[second], partial(host.dump_store_path, second))
            await host.dump_store_path(first, sink)

        nars: list[NarProducer] = [first_nar]
        nars += [partial(host.dump_store_path, p) for p in (second, third)]
        await client.add_multiple_to_store(
            [(infos[p], nar) for p, nar in zip(paths, nars, strict=True)]
        )
        assert await client.query_valid_paths(paths) == set(paths)
        assert client.usable

    run(go())
