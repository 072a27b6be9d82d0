"""Build plans and machine specs for executor tests over the in-memory store.

A plan is named by a graph of derivation names (``{"b": ["a"]}``: b needs a); every derivation
also takes one input source, and its output is named after it.
"""

import asyncio

from offload.scheduler.policy import MachineSlotSpec
from offload.scheduler.run import BuildPlan, Executor, RunReport
from offload.store.drv import Derivation, DerivationOutput
from offload.transport.fake import BuildOutcome, FakeBuild, FakePath, store_path
from offload.ui.events import Event, JobFinished

SYSTEM = "x86_64-linux"


def make_plan(edges: dict[str, list[str]], *, features: dict[str, str] | None = None):
    """A plan of derivations named by ``edges`` keys, each depending on the listed names."""
    features = features or {}
    src = FakePath.from_text(store_path("src"), "source")
    drvs: dict[str, Derivation] = {}
    paths = {name: store_path(f"{name}.drv") for name in edges}
    outs = {name: store_path(name) for name in edges}
    for name, deps in edges.items():
        env = {"name": name, "out": outs[name], "system": SYSTEM, "builder": "/bin/sh"}
        if name in features:
            env["requiredSystemFeatures"] = features[name]
        drvs[paths[name]] = Derivation.create(
            outputs={"out": DerivationOutput(outs[name], "", "")},
            input_drvs={paths[d]: ["out"] for d in deps},
            input_srcs=[src.path],
            platform=SYSTEM,
            builder="/bin/sh",
            args=["-c", "true"],
            env=env,
        )
    order = _topo(edges)
    plan = BuildPlan(
        drvs=drvs,
        order=[paths[n] for n in order],
        inputs={paths[n]: tuple(sorted([src.path, *(outs[d] for d in edges[n])])) for n in edges},
        outputs={paths[n]: (outs[n],) for n in edges},
    )
    return plan, paths, outs, src


def _topo(edges):
    order: list[str] = []
    seen: set[str] = set()

    def visit(n):
        if n in seen:
            return
        seen.add(n)
        for d in edges[n]:
            visit(d)
        order.append(n)

    for n in edges:
        visit(n)
    return order


async def keeps_no_references(build: FakeBuild) -> BuildOutcome:
    """Outputs that use their inputs only while building, so their closures are themselves."""
    outputs = {
        name: FakePath.from_text(out.path, f"{name} of {build.drv_path}\n")
        for name, out in build.drv.outputs.items()
    }
    return BuildOutcome(outputs=outputs)


def spec(name, speed=1.0, slots=2, *, mandatory=(), supported=()):
    return MachineSlotSpec(
        name=name,
        speed=speed,
        slots=slots,
        systems=frozenset({SYSTEM}),
        supported=frozenset(supported),
        mandatory=frozenset(mandatory),
    )


def finished(events, status="built"):
    return {e.name: e.machine for e in events if isinstance(e, JobFinished) and e.status == status}


def run_executor(
    plan, members, local, *, keep_going=False, estimates=None
) -> tuple[RunReport, list[Event]]:
    """Run ``plan`` to its end with an executor; its report and every event it emitted."""
    events: list[Event] = []
    executor = Executor(
        plan, members, local, emit=events.append, keep_going=keep_going, estimates=estimates
    )
    return asyncio.run(executor.run()), events
