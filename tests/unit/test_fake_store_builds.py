"""The real ServeClient against FakeStore, builds and the link: BuildDerivation run by a scripted
builder, cancelling it, and FakeLink's sessions and the failures it puts in."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

from offload.errors import ProtocolError, RemoteError, SshError
from offload.protocol.serve import (
    BuildOptions,
    BuildStatus,
    StoreClient,
    copy_paths,
    topo_sort_infos,
)
from offload.transport.fake import BuildOutcome, FakeBuild, FakeLink, FakePath, FakeStore
from tests.helpers.fake_stores import (
    DEV,
    DRV,
    OUT,
    SRC,
    A,
    builder_store,
    chain,
    hello,
    nar_of,
    run,
)

if TYPE_CHECKING:
    from offload.scheduler.run import MemberLink

    def _is_a_link(link: FakeLink) -> MemberLink:
        return link  # mypy checks that FakeLink satisfies the executor's protocol


# -- builds -------------------------------------------------------------------------------------


def test_default_build_creates_the_outputs() -> None:
    store = builder_store()

    async def go() -> None:
        async with store.connect() as client:
            result = await client.build_derivation(DRV, hello())
            assert result.status == BuildStatus.BUILT
            assert result.success
            assert result.times_built == 1
            assert result.built_outputs == {"out": OUT, "dev": DEV}
            infos = await client.query_path_infos([OUT, DEV])
            assert infos[OUT].references == (SRC,)
            assert infos[OUT].deriver == DRV
            text = await nar_of(client, OUT)
            assert DRV.encode() in text
            assert b"b1" in text
            # Built again: the outputs are valid, nothing runs.
            again = await client.build_derivation(DRV, hello())
            assert again.status == BuildStatus.ALREADY_VALID
            assert (again.times_built, again.start_time) == (0, 0)
            assert again.built_outputs == {"out": OUT, "dev": DEV}

    run(go())
    assert store.builds == [DRV]


def test_build_with_a_missing_input_fails_like_nix_28() -> None:
    store = builder_store()
    ran: list[str] = []

    async def builder(build: FakeBuild) -> BuildOutcome | None:
        ran.append(build.drv_path)
        return None

    store.builder = builder

    async def go() -> None:
        async with store.connect() as client:
            result = await client.build_derivation(DRV, hello(inputs=(SRC, A)))
            assert result.status == BuildStatus.MISC_FAILURE
            assert result.error_msg == (
                f"dependency '{A}' of '{DRV}' does not exist, and substitution is disabled"
            )
            assert result.built_outputs == {}
            # A failed build is an answer, not a broken connection.
            assert await client.query_valid_paths([OUT]) == set()

    run(go())
    assert ran == []
    assert store.builds == []


def test_builder_sees_the_request_as_sent() -> None:
    seen: list[FakeBuild] = []

    async def builder(build: FakeBuild) -> BuildOutcome | None:
        seen.append(build)
        return None

    store = FakeStore("b1", [FakePath.from_text(SRC, "s"), FakePath.from_text(A, "a")])
    store.builder = builder

    async def go() -> None:
        async with store.connect() as client:
            await client.build_derivation(DRV, hello(), input_srcs=[SRC, A])

    run(go())
    (build,) = seen
    want = hello(inputs=(SRC, A))
    assert build.drv_path == DRV
    assert build.drv == want
    assert dict(build.drv.env) == dict(want.env)
    assert dict(build.drv.outputs) == dict(want.outputs)
    assert build.drv.input_drvs == {}
    assert build.options.enforce_determinism is True


def test_scripted_failure_returns_its_status_and_logs_reach_on_log() -> None:
    async def builder(build: FakeBuild) -> BuildOutcome:
        build.log("compiling hello")
        build.log("error: hello.c:1: oops")
        return BuildOutcome(BuildStatus.PERMANENT_FAILURE, f"builder for '{build.drv_path}' failed")

    store = builder_store(builder=builder)
    lines: list[str] = []

    async def go() -> None:
        async with store.connect(on_log=lines.append) as client:
            result = await client.build_derivation(DRV, hello())
            assert result.status == BuildStatus.PERMANENT_FAILURE
            assert int(result.status) == 3
            assert result.error_msg == f"builder for '{DRV}' failed"
            assert result.times_built == 1
            assert result.built_outputs == {}
            assert not store.has(OUT)
            # The builder's own "error:" line did not break the connection.
            assert await client.query_valid_paths([SRC]) == {SRC}

    run(go())  # leaving connect() waits for the stderr stream to end
    assert lines == ["compiling hello", "error: hello.c:1: oops"]


def gated_builder(started: asyncio.Event, gate: asyncio.Event, stopped: list[str]) -> Any:
    async def builder(build: FakeBuild) -> BuildOutcome | None:
        started.set()
        try:
            await gate.wait()
        except asyncio.CancelledError:
            stopped.append(build.drv_path)
            raise
        return None

    return builder


def test_gated_build_finishes_only_when_the_test_says() -> None:
    async def go() -> None:
        started, gate = asyncio.Event(), asyncio.Event()
        stopped: list[str] = []
        store = builder_store(builder=gated_builder(started, gate, stopped))
        async with store.connect() as client:
            build = asyncio.create_task(client.build_derivation(DRV, hello()))
            await started.wait()
            # The builder is waiting on the gate, so no reply can have been sent.
            assert not build.done()
            assert not store.has(OUT)
            gate.set()
            result = await build
            assert result.status == BuildStatus.BUILT
            assert store.has(OUT)
        assert stopped == []

    run(go())


def test_cancel_stops_a_running_build() -> None:
    async def go() -> None:
        started, gate = asyncio.Event(), asyncio.Event()
        stopped: list[str] = []
        store = builder_store(builder=gated_builder(started, gate, stopped))
        link = FakeLink(store)
        async with link.session() as client:
            build = asyncio.create_task(client.build_derivation(DRV, hello()))
            await started.wait()
            await link.cancel(client)
            assert stopped == [DRV]
            # The remote went away under the request.
            with pytest.raises(ProtocolError, match="closed the connection during BuildDerivation"):
                await build
        assert link.cancelled == [DRV]
        assert store.interrupted == [DRV]
        assert not store.has(OUT)

    run(go())


def test_cancel_after_the_client_task_was_cancelled_like_the_executor_does() -> None:
    async def go() -> None:
        started, gate = asyncio.Event(), asyncio.Event()
        stopped: list[str] = []
        store = builder_store(builder=gated_builder(started, gate, stopped))
        link = FakeLink(store)
        holder: list[StoreClient] = []

        async def executor_build() -> None:
            async with link.session() as client:
                holder.append(client)
                await client.build_derivation(DRV, hello())

        task = asyncio.create_task(executor_build())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Leaving the session closed the connection, which stopped the remote build.
        assert stopped == [DRV]
        await link.cancel(holder[0])
        assert link.cancelled == [DRV]
        assert link.cancel_calls == 1
        assert not store.has(OUT)

    run(go())


def test_cancel_of_an_idle_session_records_no_build() -> None:
    async def go() -> None:
        link = FakeLink(builder_store())
        async with link.session() as client:
            await link.cancel(client)
            with pytest.raises(ProtocolError):
                await client.query_valid_paths([SRC])
        assert link.cancelled == []
        assert link.cancel_calls == 1

    run(go())


def test_builder_that_raises_ends_the_session_with_an_error() -> None:
    async def builder(build: FakeBuild) -> BuildOutcome | None:
        raise ValueError("script bug")

    async def go() -> None:
        async with builder_store(builder=builder).connect() as client:
            with pytest.raises(RemoteError, match="script bug"):
                await client.build_derivation(DRV, hello())

    run(go())


# -- the link: sessions and failures ----------------------------------------------------------


def test_link_sessions_and_go_down() -> None:
    async def go() -> None:
        store = builder_store()
        link = FakeLink(store)
        async with link.session() as one, link.session() as two:
            assert one is not two
            assert await one.query_valid_paths([SRC]) == {SRC}
        link.go_down()
        with pytest.raises(SshError, match="cannot connect to builder 'b1'"):
            async with link.session():
                pass
        link.come_up()
        async with link.session() as three:
            assert await three.query_valid_paths([SRC]) == {SRC}
        assert (link.sessions_opened, link.sessions_refused, link.peak_sessions) == (3, 1, 2)

    run(go())


def test_sessions_beyond_max_wait_for_a_free_one() -> None:
    async def go() -> None:
        link = FakeLink(builder_store(), max_sessions=2)
        two_in, release = asyncio.Event(), asyncio.Event()
        inside: list[int] = []

        async def hold(i: int) -> None:
            async with link.session():
                inside.append(i)
                if len(inside) == 2:
                    two_in.set()
                await release.wait()

        tasks = [asyncio.create_task(hold(i)) for i in range(4)]
        await two_in.wait()
        release.set()
        await asyncio.gather(*tasks)
        assert sorted(inside) == [0, 1, 2, 3]
        assert link.peak_sessions == 2
        assert link.sessions_opened == 4

    run(go())


def test_break_at_handshake_is_an_ssh_error_and_the_next_session_works() -> None:
    async def go() -> None:
        link = FakeLink(builder_store())
        link.break_next("handshake")
        with pytest.raises(SshError, match="b1"):
            async with link.session():
                pass
        async with link.session() as client:
            assert await client.query_valid_paths([SRC]) == {SRC}

    run(go())


def test_break_at_build_start_drops_the_request_mid_way() -> None:
    store = builder_store()
    lines: list[str] = []

    async def go() -> None:
        link = FakeLink(store)
        link.break_next("build-start")
        async with link.session() as client:
            client.on_log = lines.append
            with pytest.raises(ProtocolError) as caught:
                await client.build_derivation(DRV, hello())
            assert not isinstance(caught.value, RemoteError)
            with pytest.raises(ProtocolError, match="unusable"):
                await client.query_valid_paths([SRC])

    run(go())
    assert lines == ["Connection to b1 closed by remote host."]
    assert store.builds == []
    assert not store.has(OUT)


def test_break_with_an_error_message_is_a_remote_error() -> None:
    async def go() -> None:
        link = FakeLink(builder_store())
        link.break_next("request", message="error: out of disk space")
        async with link.session() as client:
            with pytest.raises(RemoteError, match="out of disk space"):
                await client.query_valid_paths([SRC])

    run(go())


def test_break_at_build_end_keeps_the_remote_outputs_but_loses_the_reply() -> None:
    store = builder_store()

    async def go() -> None:
        link = FakeLink(store)
        link.break_next("build-end", message="")
        async with link.session() as client:
            with pytest.raises(ProtocolError, match="closed the connection during BuildDerivation"):
                await client.build_derivation(DRV, hello())

    run(go())
    assert store.builds == [DRV]
    assert store.has(OUT)


def test_break_during_a_copy_registers_nothing_on_either_side() -> None:
    src_store = FakeStore("src", chain())

    async def copy(dst_store: FakeStore) -> None:
        async with src_store.connect() as src, dst_store.connect() as dst:
            infos = topo_sort_infos(await src.query_path_infos([A]))
            await copy_paths(src, dst, infos)

    dst_store = FakeStore("dst")
    dst_store.break_next("add-to-store")
    with pytest.raises(ProtocolError):
        run(copy(dst_store))
    assert not dst_store.has(A)

    src_store.break_next("dump")
    dst_store = FakeStore("dst")
    with pytest.raises(ProtocolError, match=r"NAR stream ended|closed the connection"):
        run(copy(dst_store))
    assert not dst_store.has(A)
    assert dst_store.received == []


def test_build_options_are_decoded_for_the_announced_version() -> None:
    seen: list[FakeBuild] = []

    async def builder(build: FakeBuild) -> None:
        seen.append(build)

    async def go() -> None:
        async with builder_store(builder=builder).connect() as client:
            opts = BuildOptions(
                max_silent_time=7, build_timeout=9, max_log_size=11, keep_failed=True
            )
            await client.build_derivation(DRV, hello(), options=opts)
        assert seen[0].options == opts

    run(go())
