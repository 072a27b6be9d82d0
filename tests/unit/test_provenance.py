"""What may come home from a builder (``offload.store.provenance``): the paths the run's
derivations make, their unread closures read only when needed; and a builder whose built
output names anything else, refused in a run over the in-memory serve store."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import pytest

from offload.build.prebuilt import closure_vet
from offload.errors import SchedulerError, StoreError
from offload.protocol.serve import PathInfo
from offload.scheduler.run import Executor, PoolMember
from offload.scheduler.run.outcome import local_store_failed
from offload.store.drv import Derivation, DerivationOutput
from offload.store.provenance import Provenance, RefusedPaths
from offload.transport.fake import (
    BuildOutcome,
    FakeBuild,
    FakeLink,
    FakePath,
    FakeStore,
    store_path,
)
from offload.ui.events import Event, JobFinished, MachineEvent
from tests.helpers.plans import make_plan, spec
from tests.helpers.plans import run_executor as run


def _drv(name: str, inputs: dict[str, Derivation], srcs: tuple[str, ...] = ()) -> Derivation:
    out = store_path(name)
    return Derivation.create(
        outputs={"out": DerivationOutput(out, "", "")},
        input_drvs={store_path(f"{dep}.drv"): ["out"] for dep in inputs},
        input_srcs=srcs,
        platform="x86_64-linux",
        builder="/bin/sh",
        args=(),
        env={"name": name, "out": out},
    )


def test_outputs_and_sources_of_the_read_derivations_are_explained() -> None:
    top = _drv("top", {}, srcs=(store_path("src"),))
    known = Provenance({store_path("top.drv"): top})
    stray = store_path("bash")
    paths = [store_path("top"), store_path("src"), stray]
    assert known.unexplained(paths) == [stray]


class _Files:
    """hello's derivation files (hello on glibc) as ``read`` reads them, each read noted."""

    def __init__(self) -> None:
        leaf = _drv("glibc", {}, srcs=(store_path("glibc-src"),))
        self.hello = _drv("hello", {"glibc": leaf})
        self.files = {store_path("glibc.drv"): leaf, store_path("hello.drv"): self.hello}
        self.reads: list[str] = []

    def __call__(self, path: str) -> Derivation:
        self.reads.append(path)
        return self.files[path]


def test_an_unread_closure_is_read_only_when_a_path_needs_it_and_each_file_once() -> None:
    read = _Files()
    files, reads = read.files, read.reads
    known = Provenance({store_path("app.drv"): _drv("app", {"hello": read.hello})}, read)
    assert known.unexplained([store_path("app")], roots=[store_path("app.drv")]) == []
    assert reads == []  # explained by what was read already
    wanted = [store_path("glibc"), store_path("glibc-src"), store_path("hello")]
    assert known.unexplained(wanted, roots=[store_path("app.drv")]) == []
    assert sorted(reads) == sorted(files)
    stray = store_path("bash")
    assert known.unexplained([stray, store_path("glibc")], roots=[store_path("app.drv")]) == [stray]
    assert len(reads) == 2  # the closure was walked once


class _Liars:
    """A plan of one derivation, ``top``, and builders whose output of it refers to ``stray``,
    a "bash" of their own that they alone hold."""

    def __init__(self) -> None:
        self.plan, _, self.outs, self.src = make_plan({"top": []})
        self.stray = FakePath.from_text(store_path("bash"), "not the bash you know\n")

    async def _lying(self, build: FakeBuild) -> BuildOutcome:
        out = FakePath.from_text(self.outs["top"], "top\n", references=[self.stray.path])
        return BuildOutcome(outputs={"out": out})

    def member(self, name: str) -> PoolMember:
        store = FakeStore(name, [self.src, self.stray], builder=self._lying)
        return PoolMember(spec(name, speed=100, slots=1), FakeLink(store), remote=True)


def test_a_builder_whose_output_names_a_stray_is_down_and_the_build_made_here() -> None:
    liars = _Liars()
    plan, outs, src, stray = liars.plan, liars.outs, liars.src, liars.stray
    local_store = FakeStore("local", [src])
    local = FakeLink(local_store)
    members = [
        liars.member("liar"),
        PoolMember(spec("local", speed=1, slots=1), local, remote=False),
    ]
    report, events = run(plan, members, local)
    assert report.ok
    assert not local_store.has(stray.path)
    assert local_store.has(outs["top"])
    (down,) = [e for e in events if isinstance(e, MachineEvent) and e.state == "down"]
    assert down.machine == "liar"
    assert f"refer to '{stray.path}', which is made by no derivation of this run" in down.message
    ended = [(e.machine, e.status) for e in events if isinstance(e, JobFinished)]
    assert ended == [("liar", "lost"), ("local", "built")]


def test_a_path_valid_here_goes_on_to_another_builder_from_here_not_from_the_builder() -> None:
    # a (built on X) refers to libbar, valid here but made by no derivation of the run (its
    # derivation was never read); b, which needs a, can build on Y only, which lacks libbar.
    # X is honest about the reference, not about libbar's bytes: Y must get this host's.
    plan, _, outs, src = make_plan({"a": [], "b": ["a"]}, features={"a": "fx", "b": "fy"})
    libbar = FakePath.from_text(store_path("libbar"), "libbar\n")
    planted = FakePath.from_text(libbar.path, "not the libbar you know\n")

    async def linking(build: FakeBuild) -> BuildOutcome | None:
        refers = [src.path, libbar.path]
        return BuildOutcome(outputs={"out": FakePath.from_text(outs["a"], "a\n", refers)})

    local = FakeLink(FakeStore("local", [src, libbar]))
    y_store = FakeStore("Y", [])
    members = [
        PoolMember(spec("X", speed=10, slots=1, supported=("fx",)),
                   FakeLink(FakeStore("X", [src, planted], builder=linking)), remote=True),
        PoolMember(spec("Y", speed=10, slots=1, supported=("fy",)), FakeLink(y_store),
                   remote=True),
    ]  # fmt: skip
    report, events = run(plan, members, local)
    assert report.ok
    assert not [e for e in events if isinstance(e, MachineEvent) and e.state == "down"]
    assert y_store.paths[libbar.path].nar == libbar.nar  # this host's, never X's
    (b_built,) = [e for e in events if isinstance(e, JobFinished) and e.name == "b"]
    a_nar = y_store.paths[outs["a"]].nar
    # Its inputs' bytes: the source and libbar from here, a from X.
    assert b_built.bytes_sent == len(src.nar) + len(libbar.nar) + len(a_nar)
    ended = {(e.name, e.machine, e.status) for e in events if isinstance(e, JobFinished)}
    assert ended == {("a", "X", "built"), ("b", "Y", "built")}


def test_builders_that_all_name_a_stray_end_the_run_each_said_down_with_it() -> None:
    # Only liars can build it: each is backed off in turn (its refusal said), and once none
    # is left the run ends as one with no machine for what remains, nothing brought home.
    liars = _Liars()
    plan, outs, stray = liars.plan, liars.outs, liars.stray
    local_store = FakeStore("local", [liars.src])
    members = [liars.member(f"liar{i}") for i in range(3)]
    events: list[Event] = []
    executor = Executor(plan, members, FakeLink(local_store), emit=events.append)
    with pytest.raises(SchedulerError) as caught:
        asyncio.run(executor.run())
    said = f"refer to '{stray.path}', which is made by no derivation of this run"
    assert caught.value.message.count(said) == 3  # each machine, with why it is down
    downs = [e for e in events if isinstance(e, MachineEvent) and e.state == "down"]
    assert sorted(e.machine for e in downs) == ["liar0", "liar1", "liar2"]
    assert all(said in e.message for e in downs)
    assert not local_store.has(stray.path)
    assert not local_store.has(outs["top"])


def test_the_walk_stops_once_every_path_is_explained() -> None:
    read = _Files()
    reads = read.reads
    known = Provenance({store_path("app.drv"): _drv("app", {"hello": read.hello})}, read)
    assert known.unexplained([store_path("hello")], roots=[store_path("app.drv")]) == []
    assert reads == [store_path("hello.drv")]  # glibc's file is not needed for it
    assert known.unexplained([store_path("glibc")], roots=[store_path("app.drv")]) == []
    assert reads == [store_path("hello.drv"), store_path("glibc.drv")]


def test_a_derivation_this_host_cannot_read_is_its_own_fault_not_the_builders() -> None:
    def unreadable(path: str) -> Derivation:
        raise OSError(f"{path}: Input/output error")

    app = store_path("app.drv")
    vet = closure_vet(
        app, "b1", Provenance({app: _drv("app", {"hello": _drv("hello", {})})}, unreadable)
    )
    info = PathInfo(path=store_path("hello"), deriver=None, references=(), nar_size=8, nar_hash="")
    with pytest.raises(StoreError) as caught:
        asyncio.run(_awaited(vet([info])))
    assert not isinstance(caught.value, RefusedPaths)
    assert local_store_failed(caught.value)
    assert "Input/output error" in caught.value.message


async def _awaited(step: Awaitable[object]) -> None:
    await step


def test_a_file_that_could_not_be_read_is_read_again_by_the_next_call() -> None:
    read = _Files()
    broken = {"once": True}

    def flaky(path: str) -> Derivation:
        if path.endswith("glibc.drv") and broken.pop("once", False):
            raise OSError("Input/output error")
        return read(path)

    known = Provenance({store_path("app.drv"): _drv("app", {"hello": read.hello})}, flaky)
    with pytest.raises(OSError):
        known.unexplained([store_path("glibc")], roots=[store_path("app.drv")])
    assert known.unexplained([store_path("glibc-src")], roots=[store_path("app.drv")]) == []
