"""MachineLink and LocalLink against a real fleet member and real Nix 2.8.

The module starts its own two-member fleet (one member's nix.conf is edited for the substitute
test, so the session-wide fleet is left alone) and stops it at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from offload.errors import OffloadError, SshError
from offload.fleet import Fleet, MemberSpec
from offload.protocol.serve import BuildStatus, Sink, copy_paths
from offload.store.drv import read_derivation
from offload.transport.links import LocalLink, MachineLink
from offload.transport.ssh import SshTarget
from tests.helpers.fleets import established, fleet_machine, private_fleet_fixture, ssh_using

own_fleet = private_fleet_fixture(
    [MemberSpec("m1", 1, 2), MemberSpec("s1", 1, 1)],
    "ofll",
    scope="module",
    doc="m1 (two slots) and s1 (one, whose nix.conf a test edits), once for the module.",
)


def _link(fleet: Fleet, name: str = "m1", **kw: object) -> MachineLink:
    return MachineLink.from_machine(fleet_machine(fleet, name), env=fleet.env(), **kw)  # type: ignore[arg-type]


def _sh(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


def _member_procs(fleet: Fleet, name: str) -> list[str]:
    """Command lines of processes that see the member's /nix, other than its sshd.

    Not by mount namespace: nix-store unshares a new one of its own (a copy, so it still sees
    the member's /nix), and its builders inherit that.
    """
    member = fleet.member(name)
    want = (member.root / "nix").stat()
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in (member.pid, os.getpid()):
            continue
        try:
            seen = (entry / "root" / "nix").stat()
            if (seen.st_dev, seen.st_ino) != (want.st_dev, want.st_ino):
                continue
            out.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return [c for c in out if c]


def _wait_until(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _added_path(tmp_path: Path, size: int) -> str:
    data = tmp_path / f"blob-{uuid.uuid4().hex[:8]}"
    data.write_bytes(os.urandom(size))
    return _sh("nix-store", "--add", str(data))


def test_sessions_reuse_one_master_and_run_in_parallel(own_fleet: Fleet) -> None:
    port = own_fleet.member("m1").port
    before = established(port)

    async def go() -> None:
        async with _link(own_fleet, max_sessions=3) as link:
            for _ in range(10):
                async with link.session() as client:
                    assert await client.query_valid_paths([]) == set()
            assert link.stats.sessions_opened == 1
            active = 0
            peak = 0

            async def borrow() -> None:
                nonlocal active, peak
                async with link.session() as client:
                    active += 1
                    peak = max(peak, active)
                    await client.query_closure([])
                    await asyncio.sleep(0)
                    active -= 1

            await asyncio.gather(*(borrow() for _ in range(9)))
            assert peak <= link.max_sessions
            assert link.stats.sessions_opened <= link.max_sessions
            assert link.open_sessions == link.stats.sessions_opened
            # One ssh connection for all of them: the sessions are multiplexed on the master.
            assert established(port) - before == 1
            control = link.ssh.control_path
            assert control is not None
            assert control.parent.stat().st_mode & 0o777 == 0o700
            check = await asyncio.to_thread(
                subprocess.run,
                ["ssh", "-F", str(own_fleet.ssh_config), "-S", str(control), "-O", "check", "m1"],
                capture_output=True,
                check=False,
            )
            assert check.returncode == 0
        assert not control.parent.exists()
        assert ssh_using(control.parent) == []

    asyncio.run(go())
    assert _wait_until(lambda: established(port) == before)
    assert _wait_until(lambda: not any("nix-store" in c for c in _member_procs(own_fleet, "m1")))


def test_warm_opens_sessions_ahead_that_borrowers_then_reuse(own_fleet: Fleet) -> None:
    async def go() -> None:
        async with _link(own_fleet, max_sessions=3) as link:
            await link.warm(2)
            assert (link.open_sessions, link.stats.sessions_opened) == (2, 2)
            await link.warm(2)  # already there: nothing more
            await link.warm(9)  # never past max_sessions
            assert link.stats.sessions_opened == 3
            held = contextlib.AsyncExitStack()
            async with held:
                for _ in range(3):
                    client = await held.enter_async_context(link.session())
                    assert await client.query_valid_paths([]) == set()
                assert link.stats.sessions_opened == 3  # all three came from the warm pool

    asyncio.run(go())
    assert _wait_until(lambda: not any("nix-store" in c for c in _member_procs(own_fleet, "m1")))


serve_only_fleet = private_fleet_fixture(
    [MemberSpec.parse("r1:1:1:serve")], "oflr", doc="r1, whose key runs only the serve program."
)


def test_a_fresh_build_session_where_slots_cannot_be_counted_is_a_new_one(
    serve_only_fleet: Fleet,
) -> None:
    # A reconnect's probe: one lent from the pool, idle since before a fall, passed for an
    # answer while its ssh was not yet reaped (restricted builders were backed off for it).
    async def go() -> None:
        async with _link(serve_only_fleet, "r1") as link:
            async with link.build_session():
                pass
            assert link.slot_fallback is not None  # no slot lock there: pooled sessions
            assert (link.open_sessions, link.stats.sessions_opened) == (1, 1)
            async with link.build_session(fresh=True) as client:
                assert await client.query_valid_paths([]) == set()
                assert link.stats.sessions_opened == 2
            async with link.build_session():  # not fresh: the pool's
                assert link.stats.sessions_opened == 2

    asyncio.run(go())


def test_existing_path_is_not_sent_again(own_fleet: Fleet, tmp_path: Path) -> None:
    path = _added_path(tmp_path, 100_000)

    async def send(link: MachineLink, local: LocalLink) -> int:
        async with local.session() as src, link.session() as dst:
            if await dst.query_valid_paths([path]):
                return 0
            infos = await src.query_path_infos([path])
            return await copy_paths(src, dst, list(infos.values()))

    async def go() -> None:
        async with _link(own_fleet) as link, LocalLink() as local:
            assert await send(link, local) > 0
            sent = link.stats.bytes_sent
            assert sent > 100_000
            assert await send(link, local) == 0
            assert link.stats.bytes_sent - sent < 1000

    asyncio.run(go())
    assert own_fleet.store_has("m1", path)


def _sleep_drv(tmp_path: Path, seconds: int) -> str:
    expr = tmp_path / "sleep.nix"
    salt = uuid.uuid4().hex[:12]
    script = f"echo offload-started >&2; /bin/sleep {seconds}; echo done > $out"
    expr.write_text(
        f'derivation {{ name = "offload-sleep-{salt}"; system = builtins.currentSystem; '
        f'builder = "/bin/sh"; args = [ "-c" {json.dumps(script)} ]; }}'
    )
    return _sh("nix-instantiate", str(expr))


def test_cancel_stops_the_remote_build_and_its_builder(own_fleet: Fleet, tmp_path: Path) -> None:
    drv_path = _sleep_drv(tmp_path, 60)
    drv = read_derivation(drv_path)
    logs: list[str] = []

    async def go() -> None:
        async with _link(own_fleet) as link:
            started = asyncio.Event()
            clients = []

            def on_log(line: str) -> None:
                logs.append(line)
                if "offload-started" in line:
                    started.set()

            async def build() -> None:
                async with link.session(on_log) as client:
                    clients.append(client)
                    await client.build_derivation(drv_path, drv)

            task = asyncio.create_task(build())
            await asyncio.wait_for(started.wait(), 30)
            # The builder is a shell whose child is sleep (in the builder's own session).
            assert await asyncio.to_thread(
                _wait_until,
                lambda: any("/bin/sleep 60" in c for c in _member_procs(own_fleet, "m1")),
            )
            assert any("nix-store --serve" in c for c in _member_procs(own_fleet, "m1"))
            # The kill below stops the serve process only while it is the one that started then.
            assert (link.remote_born(clients[0]) or "").isdigit()
            task.cancel()  # what Ctrl-C does to the build's task
            await link.cancel(clients[0])
            with pytest.raises(asyncio.CancelledError):
                await task
            # Everything is gone as soon as cancel returns: no waiting here.
            left = _member_procs(own_fleet, "m1")
            assert not any("sleep" in c or "nix-store" in c for c in left), left
            assert link.open_sessions == 0
            # The link still works afterwards.
            async with link.session() as client:
                assert await client.query_valid_paths([drv.outputs["out"].path]) == set()

    asyncio.run(go())
    assert not any("offload-serve-pid" in line for line in logs)


def test_build_over_link_and_pid_line_kept_out_of_logs(own_fleet: Fleet, tmp_path: Path) -> None:
    drv_path = _sleep_drv(tmp_path, 0)
    drv = read_derivation(drv_path)
    logs: list[str] = []

    async def go() -> None:
        async with _link(own_fleet) as link, link.session(logs.append) as client:
            result = await client.build_derivation(drv_path, drv)
            assert result.status is BuildStatus.BUILT

    asyncio.run(go())
    assert "offload-started" in logs
    assert not any("offload-serve-pid" in line for line in logs)
    assert own_fleet.store_has("m1", drv.outputs["out"].path)


def test_dropped_connection_mid_transfer_leaves_no_path(own_fleet: Fleet, tmp_path: Path) -> None:
    path = _added_path(tmp_path, 50 * 1024 * 1024)
    member_copy = own_fleet.member("m1").root / path.lstrip("/")

    async def go() -> None:
        async with _link(own_fleet) as link, LocalLink() as local:
            async with local.session() as src:
                info = (await src.query_path_infos([path]))[path]
                master = link.ssh  # the connection to drop
                sent = 0
                dropped: list[int] = []

                async def producer(sink: Sink) -> None:
                    async def counting(chunk: bytes) -> None:
                        nonlocal sent
                        await sink(chunk)
                        sent += len(chunk)
                        if sent >= 8 * 1024 * 1024 and not dropped:
                            assert master.master_pid is not None
                            os.kill(master.master_pid, signal.SIGKILL)
                            dropped.append(master.master_pid)

                    await src.dump_store_path(path, counting)

                with pytest.raises((OffloadError, ConnectionError)):
                    async with link.session() as dst:
                        await dst.add_to_store_nar(info, producer)
                assert sent < info.nar_size
            # The link reconnects for the next session.
            async with link.session() as dst:
                assert await dst.query_valid_paths([path]) == set()

    asyncio.run(go())
    assert not own_fleet.store_has("m1", path)
    # Nix 2.8 may leave the unregistered partial directory behind (it deletes it before the
    # next attempt, and GC removes it); what matters is that nothing claims to be that path.
    assert member_copy.parent.is_dir()
    assert _wait_until(lambda: not any("nix-store" in c for c in _member_procs(own_fleet, "m1")))


def test_unreachable_builder_fails_fast_naming_it() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connection refused
        target = SshTarget(host="127.0.0.1", port=port)

        async def go() -> None:
            async with MachineLink(target, name="gone", env={"PATH": os.environ["PATH"]}) as link:
                with pytest.raises(SshError) as info:
                    async with link.session():
                        pass
                assert "gone" in info.value.message
                assert "Connection refused" in info.value.message
                assert info.value.hint

        start = time.monotonic()
        asyncio.run(go())
        assert time.monotonic() - start < 5


def test_wrong_pinned_host_key_is_refused(own_fleet: Fleet) -> None:
    machine = fleet_machine(own_fleet, "m1")
    other = (own_fleet.member("s1").root / "ssh_host_ed25519_key.pub").read_text()
    target = SshTarget(host="m1", identity_file=machine.ssh_key, public_host_key=other)
    env = own_fleet.env()
    # The fleet's ssh_config pins the right key too; use only our known_hosts.
    env["NIX_SSHOPTS"] = f"-F /dev/null -o HostName=127.0.0.1 -p {own_fleet.member('m1').port}"

    async def go() -> None:
        async with MachineLink(target, name="m1", env=env) as link:
            with pytest.raises(SshError, match="Host key verification failed"):
                await link.query_valid([])

    asyncio.run(go())


def test_substitute_fetches_from_the_members_cache(own_fleet: Fleet, tmp_path: Path) -> None:
    path = _added_path(tmp_path, 200_000)
    cache = tmp_path / "cache"
    _sh(
        "nix",
        "--extra-experimental-features",
        "nix-command",
        "copy",
        "--to",
        f"file://{cache}",
        path,
    )
    conf = own_fleet.member("s1").root / "etc-nix" / "nix.conf"
    text = conf.read_text().replace("substituters =\n", "")
    conf.write_text(text + f"substituters = file://{cache}\nrequire-sigs = false\n")

    async def go() -> None:
        async with _link(own_fleet, "s1", substitute=True) as link:
            assert link.substitute
            assert await link.query_valid([path]) == {path}
            assert link.stats.bytes_sent < 2000  # the request only, no NAR

    asyncio.run(go())
    assert own_fleet.store_has("s1", path)


def test_local_link_cancel_stops_local_build(tmp_path: Path) -> None:
    drv_path = _sleep_drv(tmp_path, 60)
    drv = read_derivation(drv_path)

    def sleeping() -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if b"/bin/sleep\x0060" in (entry / "cmdline").read_bytes():
                        found.append(int(entry.name))
        return found

    async def go() -> None:
        async with LocalLink() as link:
            started = asyncio.Event()
            clients = []

            def on_log(line: str) -> None:
                if "offload-started" in line:
                    started.set()

            async def build() -> None:
                async with link.session(on_log) as client:
                    clients.append(client)
                    await client.build_derivation(drv_path, drv)

            before = set(sleeping())
            task = asyncio.create_task(build())
            await asyncio.wait_for(started.wait(), 30)
            assert await asyncio.to_thread(_wait_until, lambda: bool(set(sleeping()) - before))
            await link.cancel(clients[0])
            with pytest.raises(OffloadError):
                await task
            assert not set(sleeping()) - before

    asyncio.run(go())


def test_the_local_store_s_programs_see_no_builders_nor_hook_so_no_hook_takes_its_builds() -> None:
    # Nix 2.30 on asks its build hook for a BuildDerivation whose .drv is valid (always, here):
    # with the user's builders in force, the local machine's builds went to the builders offload
    # schedules; offload-hook as the hook finds builders in offload.toml too (a review read it
    # in Nix's source). The real Nix reads the local store's environment as its programs would.
    said = "builders = ssh://nx-lb.invalid x86_64-linux\nbuild-hook = /run/offload-hook\n"
    env = {**os.environ, "NIX_CONFIG": said}
    local = LocalLink(env=env)
    argv = ["nix", "--extra-experimental-features", "nix-command", "show-config", "--json"]
    done = subprocess.run(argv, env=local._local_transport.env, capture_output=True, check=True)
    seen = json.loads(done.stdout)
    assert seen["builders"]["value"] == ""
    assert seen["build-hook"]["value"] == ""
    assert env["NIX_CONFIG"] == said  # not changed
