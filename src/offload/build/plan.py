"""The graph turned into the executor's ``BuildPlan``: each build's inputs and outputs, and
history's estimates, with the sources sized for the builds history does not know."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from offload.build.graph import DrvGraph
from offload.protocol.serve import StoreClient
from offload.scheduler.run import BuildPlan
from offload.store.path import split_name_version

__all__ = ["build_plan", "estimated_plan"]


def build_plan(graph: DrvGraph, sizes: Mapping[str, int] | None = None) -> BuildPlan:
    """The plan for ``graph``; ``sizes`` (store path -> NAR bytes) sizes each build's sources."""
    sizes = sizes or {}
    inputs: dict[str, tuple[str, ...]] = {}
    outputs: dict[str, tuple[str, ...]] = {}
    for drv_path in graph.order:
        drv = graph.drvs[drv_path]
        paths = set(drv.input_srcs)
        for dep, names in drv.input_drvs.items():
            paths.update(graph.output_path(dep, name) for name in names)
        inputs[drv_path] = tuple(sorted(paths))
        outputs[drv_path] = tuple(graph.output_path(drv_path, name) for name in sorted(drv.outputs))
    source_bytes = {
        drv_path: sum(sizes.get(src, 0) for src in graph.drvs[drv_path].input_srcs)
        for drv_path in graph.order
    }
    return BuildPlan(
        drvs=graph.drvs,
        order=graph.order,
        inputs=inputs,
        outputs=outputs,
        source_bytes=source_bytes,
    )


async def estimated_plan(
    graph: DrvGraph,
    local: StoreClient,
    estimate: Callable[[Iterable[str]], Mapping[str, float]] | None,
) -> tuple[BuildPlan, Mapping[str, float]]:
    """The plan for ``graph`` and history's estimates (speed-1 seconds by name without
    version); the sources of the builds history does not know are sized, as a hint for their
    guessed durations (``offload.scheduler.run.size_factor``)."""
    pnames = {d: split_name_version(graph.drvs[d].name)[0] for d in graph.order}
    estimates = estimate(set(pnames.values())) if estimate is not None else {}
    sources = {
        src
        for d, pname in pnames.items()
        if pname not in estimates
        for src in graph.drvs[d].input_srcs
    }
    infos = await local.query_path_infos(sources) if sources else {}
    return build_plan(graph, {path: info.nar_size for path, info in infos.items()}), estimates
