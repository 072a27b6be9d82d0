import asyncio
import fcntl
import os
import subprocess
import sys
import time

import pytest

from offload import slots
from offload.procfs import pid_namespace
from offload.scheduler.run import Executor, PoolMember
from offload.slot_holders import line_fields
from offload.slots import SlotLocks, slot_key
from offload.store.path import StorePath
from offload.transport.fake import BuildOutcome, FakeBuild, FakeLink, FakeStore
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


def test_a_slot_file_says_exactly_its_holders_line_whatever_it_said_before(tmp_path):
    locks = SlotLocks(tmp_path)
    mine = f"offload pid={os.getpid()} ns={pid_namespace()}".ljust(127) + "\n"
    longer = "offload pid=1 until=1700000000.123 drv=" + "x" * 200 + "\n"
    cases = [longer, "", "short\n", "x" * len(mine), mine]
    for before in cases:  # longer, empty, shorter, same length, and this process's own line
        (tmp_path / "local-0").write_text(before)
        held = locks.try_acquire("local", 1)
        assert held is not None
        os.close(held)
        assert (tmp_path / "local-0").read_text() == mine


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


def test_a_probe_tells_offloads_holders_from_nixs(tmp_path):
    locks = SlotLocks(tmp_path)
    ours = locks.try_acquire("ssh:__b", 3, until=1234.5)
    assert ours is not None
    line = f"offload pid={os.getpid()} ns={pid_namespace()} until=1234.500"
    assert (tmp_path / "ssh:__b-0").read_text().rstrip() == line
    # Nix's build-remote holds slot 1 and leaves its file empty.
    nix = os.open(tmp_path / "ssh:__b-1", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(nix, fcntl.LOCK_EX)
    try:
        probe = locks.probe("ssh:__b", 3)
    finally:
        os.close(nix)
        os.close(ours)
    assert (probe.free, probe.by_nix) == (1, 1)
    assert probe.busy_ends == (1234.5, None)


def test_a_probe_only_reads_and_looks_at_the_files_there_are(tmp_path):
    # A machine of 50,000 slots (or -j 4294967295): the probe made a file for each, in Nix's
    # shared directory, on every `offload status`; now it makes none, and stops at the first
    # slot never taken (every holder takes the lowest free one, making its file then).
    locks = SlotLocks(tmp_path)
    held = locks.try_acquire("ssh:__b", 50_000, until=99.0)
    assert held is not None
    try:
        probe = locks.probe("ssh:__b", 50_000)
        huge = locks.probe("ssh:__b", 2**32 - 1)
    finally:
        os.close(held)
    assert (probe.free, probe.busy_ends) == (49_999, (99.0,))
    assert huge.free == 2**32 - 2
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ssh:__b-0"]
    reader = SlotLocks(tmp_path / "state" / "current-load", make=False)
    assert reader.probe("ssh:__b", 4).free == 4
    assert not (tmp_path / "state").exists()  # a reader leaves nothing behind


def test_the_state_directory_made_for_slot_files_is_private(tmp_path, monkeypatch):
    # Where Nix's directory is not this user's to write (here: not there), the slot files go
    # under the state directory, made 0700 as every other maker of it makes it.
    monkeypatch.setattr(slots, "NIX_CURRENT_LOAD", tmp_path / "no-nix" / "current-load")
    locks = SlotLocks.default(tmp_path / "state")
    assert locks.directory == tmp_path / "state" / "current-load"
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700


def test_an_older_hooks_bare_end_is_still_read_as_offloads(tmp_path):
    (tmp_path / "ssh:__b-0").write_text("99.5\n")
    old = os.open(tmp_path / "ssh:__b-0", os.O_RDWR)
    fcntl.flock(old, fcntl.LOCK_EX)
    try:
        probe = SlotLocks(tmp_path).probe("ssh:__b", 1)
    finally:
        os.close(old)
    assert (probe.free, probe.by_nix, probe.busy_ends) == (0, 0, (99.5,))


def test_a_slot_whose_holder_line_cannot_be_written_is_not_left_held(tmp_path, monkeypatch):
    # A full disk under the state directory: the error goes on (this host's), the slot stays
    # free.
    from offload.errors import TransportError

    locks = SlotLocks(tmp_path)

    def full(fd: int, line: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(slots, "_write_holder", full)
    with pytest.raises(TransportError, match="No space left"):
        locks.try_acquire("b", 1)
    monkeypatch.undo()
    fd = locks.try_acquire("b", 1)
    assert fd is not None  # the only slot: free again
    os.close(fd)


@pytest.fixture
def overlay_dir(tmp_path):
    """A directory on an overlay whose upper layer is on another file system (a tmpfs): there,
    as on btrfs, stat's device is not the one /proc/locks names. Needs mount rights (root)."""
    lower, top, merged = tmp_path / "lower", tmp_path / "top", tmp_path / "merged"
    for path in (lower, top, merged):
        path.mkdir()
    tmpfs = ["mount", "-t", "tmpfs", "tmpfs", str(top)]
    if subprocess.run(tmpfs, check=False, capture_output=True).returncode:
        pytest.skip("cannot mount here")
    try:
        (top / "upper").mkdir()
        (top / "work").mkdir()
        opts = f"lowerdir={lower},upperdir={top / 'upper'},workdir={top / 'work'}"
        argv = ["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)]
        if subprocess.run(argv, check=False, capture_output=True).returncode:
            pytest.skip("cannot mount an overlay here")
        try:
            yield merged
        finally:
            subprocess.run(["umount", str(merged)], check=True)
    finally:
        subprocess.run(["umount", str(top)], check=True)


def test_an_offload_holders_line_is_believed_where_stat_and_proc_locks_differ(overlay_dir):
    # A slot directory on btrfs (a subvolume: Fedora's /) or such an overlay: the holder's line
    # was read as left behind (its device never matched /proc/locks's), so every slot offload
    # held there was 'by Nix's hook' with no expected end.
    locks = SlotLocks(overlay_dir)
    ours = locks.try_acquire("ssh:__b", 2, until=1234.5)
    assert ours is not None
    try:
        info = os.fstat(ours)
        assert f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:" not in (
            slots.PROC_LOCKS.read_text()
        )  # what this test is about: the two devices differ
        probe = locks.probe("ssh:__b", 2)
    finally:
        os.close(ours)
    assert (probe.free, probe.by_nix, probe.busy_ends) == (1, 0, (1234.5,))


_HOLDER = """
import os, sys
from pathlib import Path
from offload.slots import SlotLocks
fd = SlotLocks(Path(sys.argv[1])).try_acquire("ssh:__b", 1, until=1234.5)
print("held" if fd is not None else "none", flush=True)
sys.stdin.read()
"""


def test_an_offload_holder_in_another_pid_namespace_is_still_offloads(tmp_path):
    # An offload run in a container (its own pid namespace) sharing current-load with this
    # host: its line names its pid there, /proc/locks here another number. The slot read as
    # Nix's hook's, with no expected end.
    argv = ["unshare", "--pid", "--fork", sys.executable, "-c", _HOLDER, str(tmp_path)]
    try:
        holder = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    except FileNotFoundError:
        pytest.skip("no unshare here")
    try:
        assert holder.stdout is not None
        said = holder.stdout.readline().strip()
        if not said:
            pytest.skip("cannot make a pid namespace here")
        assert said == "held"
        probe = SlotLocks(tmp_path).probe("ssh:__b", 1)
    finally:
        holder.communicate("", timeout=30)
    assert (probe.free, probe.by_nix, probe.busy_ends) == (0, 0, (1234.5,))


def test_a_slot_let_go_between_the_probes_two_looks_is_free(tmp_path, monkeypatch):
    """It was taken for Nix's own hook's with no expected end: a hook deciding then sent a
    build to a slower builder rather than wait the moment left of an offload holder's build."""
    locks = SlotLocks(tmp_path)
    holder = locks.try_acquire("ssh:__b", 1, until=1234.5)
    assert holder is not None
    read_table = slots._flock_table

    closed: list[bool] = []

    def let_go_first():  # the holder lets go after the probe's look, before /proc/locks
        if not closed:
            os.close(holder)
            closed.append(True)
        return read_table()

    monkeypatch.setattr(slots, "_flock_table", let_go_first)
    probe = locks.probe("ssh:__b", 1)
    assert (probe.free, probe.busy_ends, probe.by_nix) == (1, (), 0)


def test_a_slot_taken_after_the_probe_read_proc_locks_is_its_holders(tmp_path, monkeypatch):
    """/proc/locks is read once, at the first held slot: a later slot another offload process
    took after that read was taken for Nix's own hook's, with no expected end, as a slot let
    go between the two looks was (a hook deciding then sent a build to a slower builder)."""
    locks = SlotLocks(tmp_path)
    first = locks.try_acquire("ssh:__b", 2, until=1234.5)
    assert first is not None
    read_table = slots._flock_table
    taken: list[int | None] = []

    def take_second_after():  # another holder takes slot 1 once /proc/locks was read
        table = read_table()
        if not taken:
            taken.append(locks.try_acquire("ssh:__b", 2, until=2345.5))
        return table

    monkeypatch.setattr(slots, "_flock_table", take_second_after)
    try:
        probe = locks.probe("ssh:__b", 2)
    finally:
        for fd in [first, *taken]:
            if fd is not None:
                os.close(fd)
    assert taken[0] is not None
    assert (probe.free, probe.busy_ends, probe.by_nix) == (0, (1234.5, 2345.5), 0)


def test_a_run_writes_when_it_expects_each_build_to_end_into_the_slot_it_holds(tmp_path):
    """It wrote none: a hook on the same host deciding whether to wait for that slot took it
    for one ending after a default build, and `offload status` showed no FREE BY."""
    plan, _, _, src = make_plan({"a": []})
    seen: list[str] = []

    async def builder(build: FakeBuild) -> BuildOutcome | None:
        seen.append((tmp_path / "ssh:__b-0").read_text())
        return None  # built

    remote = FakeLink(FakeStore("b", [src], builder=builder))
    local = FakeLink(FakeStore("local", [src]))
    before = time.time()
    executor = Executor(
        plan,
        [PoolMember(spec("b", speed=4.0, slots=1), remote, remote=True, slot_key="ssh:__b")],
        local,
        emit=lambda _: None,
        slots=SlotLocks(tmp_path),
        estimates={"a": 8.0},
    )
    assert asyncio.run(executor.run()).ok
    [line] = seen
    said = line_fields(line)
    assert before + 8.0 / 4.0 <= float(said["until"]) <= time.time() + 8.0 / 4.0
    assert said["drv"] == StorePath(plan.order[0]).derivation_name  # what it builds there


def test_a_slot_file_that_cannot_be_written_is_the_local_hosts_error(tmp_path):
    # A full disk, no descriptors left, the directory removed mid-run: an OSError that ended
    # the whole run as an internal error. Now an error of this host's store, with a hint.
    from offload.errors import TransportError
    from offload.names import LOCAL

    locks = SlotLocks(tmp_path / "gone")
    (tmp_path / "gone").rmdir()
    with pytest.raises(TransportError, match=r"cannot hold a slot file in .*gone") as raised:
        locks.try_acquire("ssh:__b", 2)
    assert raised.value.peer == LOCAL
    assert raised.value.hint is not None


def test_a_slot_this_process_lets_go_goes_to_its_first_waiter_at_once(tmp_path, monkeypatch):
    # The policy counts a slot free when a losing copy is told to stop; the next build given
    # it waits for the file, and one given a slot later must not take it first.
    monkeypatch.setattr(slots, "POLL_INTERVAL", 600.0)  # no second look: only the release wakes
    locks = SlotLocks(tmp_path)
    order: list[str] = []

    async def take(name: str, release: asyncio.Event) -> None:
        async with locks.hold("ssh:__medium", 1):
            order.append(name)
            await release.wait()

    async def scenario() -> None:
        stopping, first, later = asyncio.Event(), asyncio.Event(), asyncio.Event()
        held = asyncio.create_task(take("stopping copy", stopping))
        await asyncio.sleep(0)
        waiting = asyncio.create_task(take("given first", first))
        await asyncio.sleep(0)
        assert order == ["stopping copy"]
        stopping.set()
        await held
        late = asyncio.create_task(take("given later", later))  # after the let-go
        while len(order) < 2:
            await asyncio.sleep(0)
        first.set()
        later.set()
        await asyncio.gather(waiting, late)

    asyncio.run(asyncio.wait_for(scenario(), 30))
    assert order == ["stopping copy", "given first", "given later"]


def test_slots_held_in_nix_s_directory_count_as_taken_in_a_user_s(tmp_path, monkeypatch):
    """A user (who may not write Nix's current-load) took a builder's every slot in its own
    directory while the daemon's hook held some in Nix's: four builds on a two-slot builder."""
    nix = tmp_path / "nix"
    monkeypatch.setattr(slots, "NIX_CURRENT_LOAD", nix)
    daemons = SlotLocks(nix).try_acquire("ssh:__b", 2)  # the daemon's hook's build there
    assert daemons is not None
    real_access = os.access
    monkeypatch.setattr(  # as a user: Nix's directory may be looked in, not written
        os, "access", lambda p, m: False if m == os.W_OK else real_access(p, m)
    )
    own = SlotLocks.default(tmp_path / "state")
    assert own.directory == tmp_path / "state" / "current-load"
    first = own.try_acquire("ssh:__b", 2)
    assert first is not None
    assert own.try_acquire("ssh:__b", 2) is None
    os.close(daemons)
    second = own.try_acquire("ssh:__b", 2)
    assert second is not None
    for fd in (first, second):
        os.close(fd)


def test_slots_let_go_out_of_turn_still_count_with_nix_s(tmp_path, monkeypatch):
    """The builds here were taken to hold the first slots: with slot 1 held here and slot 0
    let go, a third build took slot 0 beside the daemon's one, three on two slots."""
    nix = tmp_path / "nix"
    monkeypatch.setattr(slots, "NIX_CURRENT_LOAD", nix)
    own = SlotLocks(tmp_path / "own", others=SlotLocks(nix, make=False))
    first, second = own.try_acquire("ssh:__b", 2), own.try_acquire("ssh:__b", 2)
    assert first is not None
    assert second is not None
    os.close(first)  # slot 0 let go, slot 1 still held here
    daemons = SlotLocks(nix).try_acquire("ssh:__b", 2)
    assert daemons is not None
    try:
        assert own.try_acquire("ssh:__b", 2) is None
    finally:
        os.close(daemons)
        os.close(second)
