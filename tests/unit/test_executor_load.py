"""The executor follows a builder's load during the run, over the fake stores (no sleeps): a
report mid-run cuts its slots for the builds placed after it, one later gives them back, and
each change is told as a ``loaded`` machine event and in the summary."""

from __future__ import annotations

import asyncio
import io

from offload.load import RemoteLoad
from offload.scheduler.run import Executor, PoolMember
from offload.transport.fake import BuildOutcome, FakeBuild, FakeLink, FakeStore
from offload.ui.events import Event, MachineEvent
from offload.ui.summary import render_summary, summarize
from tests.helpers.plans import finished, make_plan, spec

HERE = "1f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9"
ELSEWHERE = "0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9"
IDLE = RemoteLoad(2, 0.0, 1, ELSEWHERE)
BUSY = RemoteLoad(2, 4.5, 9, ELSEWHERE)  # 2.5 cores beyond its 2: two of its four slots go


class Busy:
    """The builder: counts its builds running at once; the first (``a``) reports ``report``,
    the ``flip``-th build after it reports ``then``, as session starts there would."""

    def __init__(self, report: RemoteLoad, then: RemoteLoad | None = None, flip: int = 0) -> None:
        self.report, self.then, self.flip = report, then, flip
        self.executor: Executor | None = None
        self.running = 0
        self.started = 0
        # How many were running when each build after ``a`` started, in order.
        self.at_start: list[int] = []

    async def build(self, build: FakeBuild) -> BuildOutcome | None:
        assert self.executor is not None
        if build.drv.env["name"] == "a":
            self.executor.loads.reported("busy", self.report)
            return None
        self.running += 1
        self.started += 1
        self.at_start.append(self.running)
        if self.then is not None and self.started == self.flip:
            self.executor.loads.reported("busy", self.then)
        for _ in range(20):  # let every build placed alongside start too
            await asyncio.sleep(0)
        self.running -= 1
        return None


def run(busy: Busy, count: int = 12) -> tuple[list[Event], Executor]:
    edges = {"a": [], **{f"b{i}": ["a"] for i in range(count)}}
    plan, _, _, src = make_plan(edges)
    local = FakeLink(FakeStore("local", [src]))
    members = [
        PoolMember(spec("local", speed=1, slots=0), local, remote=False),
        PoolMember(
            spec("busy", speed=1, slots=4), FakeLink(FakeStore("busy", builder=busy.build)), True
        ),
    ]
    events: list[Event] = []
    executor = Executor(plan, members, local, emit=events.append, local_boot_id=HERE)
    busy.executor = executor
    report = asyncio.run(executor.run())
    assert report.ok
    assert set(finished(events).values()) == {"busy"}
    return events, executor


def loaded(events: list[Event]) -> list[MachineEvent]:
    return [e for e in events if isinstance(e, MachineEvent) and e.state == "loaded"]


def test_without_load_four_builds_run_there_at_once():
    busy = Busy(IDLE)
    events, _ = run(busy)
    assert max(busy.at_start) == 4
    assert loaded(events) == []


def test_a_load_reported_mid_run_cuts_the_builds_placed_after_it():
    busy = Busy(BUSY)
    events, executor = run(busy)
    # a ran alone (its report came with it); every build after it sees two slots.
    assert max(busy.at_start) == 2
    (cut,) = loaded(events)
    assert (cut.machine, cut.slots) == ("busy", 2)
    assert cut.message.startswith("load 4.5 on 2 cores")
    assert cut.message.endswith(": 2 of 4 slots")
    assert executor.members["busy"].spec.slots == 2


def test_the_load_going_away_gives_the_slots_back_for_what_is_placed_after():
    busy = Busy(BUSY, then=IDLE, flip=3)
    events, executor = run(busy, count=16)
    cut, back = loaded(events)
    assert cut.slots == 2
    assert back.slots == 4
    assert back.message.endswith("all 4 slots again")
    flipped = busy.at_start.index(max(busy.at_start))
    assert max(busy.at_start[:3]) == 2  # before the report: two at once
    assert max(busy.at_start) > 2  # after it, more
    assert flipped >= 3
    assert executor.members["busy"].spec.slots == 4
    # The summary says the deepest cut and where the last report left it.
    ((deepest, last),) = summarize(events).loaded
    assert (deepest, last) == (cut, back)
    out = io.StringIO()
    render_summary(events, out, rich=False)
    text = out.getvalue()
    assert "machines loaded (1):\n" in text
    assert f"  busy: {cut.message}; at the last report {back.message}\n" in text


def test_a_builder_on_this_hosts_kernel_is_never_cut():
    busy = Busy(RemoteLoad(2, 40.0, 9, HERE))
    events, _ = run(busy)
    assert max(busy.at_start) == 4
    assert loaded(events) == []
