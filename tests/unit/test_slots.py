import asyncio
import os

from offload.scheduler.run import Executor, PoolMember
from offload.slots import SlotLocks, slot_key
from offload.transport.fake import FakeLink, FakeStore
from offload.ui.events import Event, JobFinished, JobPhase
from tests.helpers.plans import make_plan, spec


def test_slot_files_are_named_as_nix_names_them():
    assert slot_key("ssh://nx-fast.invalid") == "ssh:__nx-fast.invalid"
    assert slot_key("ssh://h?remote-store=/tmp/x") == "ssh:__h?remote-store=_tmp_x"


def test_slots_are_shared_between_independent_holders(tmp_path):
    first, second = SlotLocks(tmp_path), SlotLocks(tmp_path)
    a = first.try_acquire("ssh:__fast", 2)
    b = second.try_acquire("ssh:__fast", 2)
    assert a is not None
    assert b is not None
    assert second.try_acquire("ssh:__fast", 2) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ssh:__fast-0", "ssh:__fast-1"]
    os.close(a)
    c = second.try_acquire("ssh:__fast", 2)
    assert c is not None
    os.close(b)
    os.close(c)


def test_a_build_waits_while_another_process_holds_the_machines_slots(tmp_path):
    plan, _, outs, src = make_plan({"a": []})
    locks = SlotLocks(tmp_path)
    held = locks.try_acquire("local", 1)
    assert held is not None
    local_store = FakeStore("local", [src])
    local = FakeLink(local_store)
    events: list[Event] = []

    async def scenario() -> None:
        queued = asyncio.Event()

        def emit(event: Event) -> None:
            events.append(event)
            if isinstance(event, JobPhase) and event.phase == "queued":
                queued.set()

        executor = Executor(
            plan,
            [PoolMember(spec("local", slots=1), local, remote=False, slot_key="local")],
            local,
            emit=emit,
            slots=SlotLocks(tmp_path),
        )
        run = asyncio.create_task(executor.run())
        await asyncio.wait_for(queued.wait(), 10)
        assert not local_store.builds  # nothing started while the slot is held elsewhere
        os.close(held)
        report = await asyncio.wait_for(run, 10)
        assert report.ok

    asyncio.run(scenario())
    assert local_store.has(outs["a"])
    phases = [e.phase for e in events if isinstance(e, JobPhase)]
    assert phases[:2] == ["queued", "connecting"]
    assert any(isinstance(e, JobFinished) and e.status == "built" for e in events)
