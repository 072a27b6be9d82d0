"""The build sections: generated graphs, and 100 trivial derivations for the per-build overhead.

``graphs``: each generated graph (layered, chain, wide, huge) built as real derivations by every
tool in turn, alternating within each repetition, fresh outputs each time; ``overhead``: trivial
derivations remote-only (``-j 0``) by the same tools, plus a local-only floor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from bench.context import LOCAL_SLOTS, Bench, Options, Save, log
from bench.graphs import generate
from bench.ng import with_ng
from bench.tools import build_once
from offload.dagfile import Dag, DagNode
from offload.scheduler.dag import Job
from offload.scheduler.policy import MachineSlotSpec
from offload.scheduler.search import simulate_tuned

# Sizes chosen so the whole run stays well inside 30 minutes on a 2-core machine: Nix's hook
# spends about 1.5 s of each remote build on ssh and copying whatever the work, so it needs ~0.8 s
# per node here. Work is scaled by 4 (DEFAULT_SCALE): a typical node then takes 0.2-1 s on the
# fastest member and the lower bounds are 14-19 s, so the targets measure scheduling rather than
# the ~0.8 s of evaluation and ssh set-up every run pays once (reported apart: wall vs span). Real
# derivations take seconds to minutes; at scale 2 that fixed cost alone was 10% of a bound.
GRAPHS = (("layered", 60, 1), ("chain", 40, 2), ("wide", 60, 3), ("huge", 50, 4))
QUICK_GRAPHS = (("layered", 40, 1),)
# In the order each repetition runs them (plus offload-ng where bench/ng.py measures it).
TOOLS = ("nix", "offload", "hook")


def planned_makespan(dag: Dag, speeds_and_slots: Sequence[tuple[float, int]]) -> float:
    """The simulator's makespan for ``dag`` under offload's policy, durations known exactly (the
    plan tuned, as a run with history tunes it)."""
    machines = [
        MachineSlotSpec(f"m{i}", speed, slots) for i, (speed, slots) in enumerate(speeds_and_slots)
    ]
    jobs = [Job(node.name, node.work, tuple(node.deps)) for node in dag.nodes]
    return simulate_tuned(jobs, machines, budget=math.inf).makespan


def graph_section(bench: Bench, opts: Options, save: Save) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    specs = QUICK_GRAPHS if opts.quick else GRAPHS
    for shape, nodes, seed in specs:
        scale_tag = f"{opts.scale:g}".replace(".", "p")
        # Node names must be Nix identifiers or nix-build skips them: no '.' from the scale.
        dag = generate(
            shape, nodes, seed, scale=opts.scale, prefix=f"{shape}{nodes}-s{seed}-x{scale_tag}"
        )
        lower = dag.lower_bound(bench.speeds_and_slots())
        timeout = 10 * lower + 60
        graph: dict[str, Any] = {
            "shape": shape,
            "nodes": nodes,
            "seed": seed,
            "scale": opts.scale,
            "critical_path": round(dag.critical_path(), 3),
            "total_work": round(dag.total_work(), 3),
            "lower_bound": round(lower, 3),
            # offload's own policy with exact durations and no overheads: what is left between
            # this and the bound is the plan's, the rest of a run's time is execution.
            "planned_s": round(planned_makespan(dag, bench.speeds_and_slots()), 3),
            "timeout_s": round(timeout, 1),
            "runs": [],
        }
        out.append(graph)
        for rep in range(opts.reps):
            for tool in with_ng(TOOLS, shape):
                log(f"graph {shape} ({nodes} nodes, bound {lower:.1f} s): {tool} rep {rep + 1}")
                record = build_once(
                    bench, dag, tool=tool, rep=rep, label=shape, jobs=LOCAL_SLOTS, timeout=timeout
                )
                graph["runs"].append(record)
                log(f"  -> {record['status']} in {record['wall_s']:.1f} s, {record['builds']}")
                save("graphs", out)
    return out


def overhead_section(bench: Bench, opts: Options, save: Save) -> dict[str, Any]:
    dag = Dag(tuple(DagNode(f"trivial-n{i:04d}", 0.0) for i in range(opts.trivial)))
    section: dict[str, Any] = {"derivations": opts.trivial, "runs": []}
    timeout = 30 + 3.0 * opts.trivial
    plan = [(rep, tool) for rep in range(opts.reps) for tool in with_ng(TOOLS)]
    plan += [(rep, "local") for rep in range(opts.reps)]
    for rep, tool in plan:
        log(f"overhead: {opts.trivial} trivial derivations, {tool} rep {rep + 1}")
        record = build_once(
            bench,
            dag,
            tool="nix" if tool == "local" else tool,
            rep=rep,
            label="trivial",
            jobs=LOCAL_SLOTS if tool == "local" else 0,
            timeout=timeout,
            builders=tool != "local",
        )
        record["tool"] = tool
        section["runs"].append(record)
        log(f"  -> {record['status']} in {record['wall_s']:.1f} s, {record['builds']}")
        save("overhead", section)
    return section
