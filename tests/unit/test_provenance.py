"""What may come home from a builder (``offload.store.provenance``): the paths the run's
derivations make, their unread closures read only when needed; and a builder whose built
output names anything else, refused in a run over the in-memory serve store."""

from __future__ import annotations

from offload.scheduler.run import PoolMember
from offload.store.drv import Derivation, DerivationOutput
from offload.store.provenance import Provenance
from offload.transport.fake import (
    BuildOutcome,
    FakeBuild,
    FakeLink,
    FakePath,
    FakeStore,
    store_path,
)
from offload.ui.events import JobFinished, MachineEvent
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


def test_an_unread_closure_is_read_only_when_a_path_needs_it_and_each_file_once() -> None:
    leaf = _drv("glibc", {}, srcs=(store_path("glibc-src"),))
    mid = _drv("hello", {"glibc": leaf})
    files = {store_path("glibc.drv"): leaf, store_path("hello.drv"): mid}
    reads: list[str] = []

    def read(path: str) -> Derivation:
        reads.append(path)
        return files[path]

    top = _drv("app", {"hello": mid})
    known = Provenance({store_path("app.drv"): top}, read)
    assert known.unexplained([store_path("app")], roots=[store_path("app.drv")]) == []
    assert reads == []  # explained by what was read already
    wanted = [store_path("glibc"), store_path("glibc-src"), store_path("hello")]
    assert known.unexplained(wanted, roots=[store_path("app.drv")]) == []
    assert sorted(reads) == sorted(files)
    stray = store_path("bash")
    assert known.unexplained([stray, store_path("glibc")], roots=[store_path("app.drv")]) == [stray]
    assert len(reads) == 2  # the closure was walked once


def test_a_builder_whose_output_names_a_stray_is_down_and_the_build_made_here() -> None:
    plan, _, outs, src = make_plan({"top": []})
    stray = FakePath.from_text(store_path("bash"), "not the bash you know\n")

    async def lying(build: FakeBuild) -> BuildOutcome:
        out = FakePath.from_text(outs["top"], "top\n", references=[stray.path])
        return BuildOutcome(outputs={"out": out})

    local_store = FakeStore("local", [src])
    local = FakeLink(local_store)
    members = [
        PoolMember(spec("liar", speed=100, slots=1),
                   FakeLink(FakeStore("liar", [src, stray], builder=lying)), remote=True),
        PoolMember(spec("local", speed=1, slots=1), local, remote=False),
    ]  # fmt: skip
    report, events = run(plan, members, local)
    assert report.ok
    assert not local_store.has(stray.path)
    assert local_store.has(outs["top"])
    (down,) = [e for e in events if isinstance(e, MachineEvent) and e.state == "down"]
    assert down.machine == "liar"
    assert f"refer to '{stray.path}', which is made by no derivation of this run" in down.message
    ended = [(e.machine, e.status) for e in events if isinstance(e, JobFinished)]
    assert ended == [("liar", "lost"), ("local", "built")]
