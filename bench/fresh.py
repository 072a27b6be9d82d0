"""Fresh seeds on the real fleet: offload's first and second runs against the optimum (issue 18).

Every run draws its seeds anew (``os.urandom``) and records them, so nothing can be tuned to
them. For each shape of ``bench/graphs.py``, ``SEEDS_PER_SHAPE`` graphs of ``NODES`` nodes at
scale 1 are built for real on the bench fleet, a round of every shape at a time (an interrupted
run has them all); the targets are judged on each shape's medians (``shape_medians``), so that
no one graph decides a shape. ``NODES`` is 100, the size ``bench/graphs.py`` calibrates its
shapes for and the size of the simulated seed sets (``bench/seeds.py``), so the real and the
simulated ratios are about the same graphs; at 40 nodes the optimum was 3-6 s and the run's
fixed second (interpreter, evaluation, handshakes) alone was a quarter of it:

- ``first``: ``offload build`` with an empty history (a state directory of its own);
- ``second``: ``offload build`` again with the history of the first, a new salt so every output
  is built again;
- ``nix``: stock ``nix-build --builders`` (Nix's own hook), once;
- ``after-nix``: ``offload build`` with an empty history again, right after Nix's hook built
  the graph: its estimates come from the build logs Nix kept (``offload.history.nix_logs``),
  as for a user who built with Nix's hook before offload. Nix's run and this one have a log
  directory of their own, so only Nix's logs are read.

The yardstick is the graph's optimum on the same machines (``bench/optimum.py``, CP-SAT, given
``SOLVER_SECONDS``; transfers and per-build costs free, so every real run pays those on top).
``report_fresh`` renders first/optimum, second/optimum, Nix/optimum and Nix/first against the
targets: first at most 1.15x, second at most 1.08x, Nix at least 2x slower where Nix takes 2.2x
the optimum or more.

Where a run's time goes beyond the optimum is recorded too: ``plan_s``, offload's own simulated
plan of the graph with exact durations (the policy's part of the gap), and per offload run
``span_s``, from its first scheduling decision to its last build (``--json``'s
``run_finished``): span less plan is what executing the plan cost (per-build set-up, copies,
estimates off on a first run), wall less span the run's fixed costs (start-up and shutdown).

The optimum pays nothing per build, but any tool that builds with Nix pays Nix's own cost of a
build (its goal, the build's directory, the fork, registering the output; on a builder one
round trip more) on every build, also on every link of a chain. So each graph also gets a
``floor``: its optimum with every build taking ``build_cost_s`` seconds more, the median time
a trivial build takes on the fleet from offload's request to Nix's answer (its ``building``
phase), measured once per section on a chain of ``COST_LINKS`` trivial builds, one at a time.
"""

from __future__ import annotations

import math
import os
import secrets
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.context import log
from bench.graphs import generate
from bench.measure import json_events, parse_offload_events, per_build, run_timed
from bench.optimum import optimum
from bench.tools import NO_SUBSTITUTES, offload_argv
from offload.dagfile import Dag, DagNode, to_nix_expression
from offload.scheduler.dag import Job
from offload.scheduler.policy import MachineSlotSpec
from offload.scheduler.search import simulate_tuned

if TYPE_CHECKING:
    from bench.context import Bench, Options, Save

__all__ = [
    "RUNS",
    "SHAPES",
    "draw_seeds",
    "fresh_section",
    "graph_optimum",
    "ratios",
    "shape_medians",
]

SHAPES = ("layered", "chain", "wide", "huge", "bootstrap")
QUICK_SHAPES = ("layered",)
NODES, QUICK_NODES = 100, 12
SEEDS_PER_SHAPE, QUICK_SEEDS_PER_SHAPE = 3, 1
SOLVER_SECONDS = 5.0
RUNS = ("first", "second", "nix", "after-nix")
SEED_LIMIT = 10**6
COST_LINKS = 20


def draw_seeds(count: int, entropy: Callable[[int], bytes] = os.urandom) -> list[int]:
    """``count`` seeds from the operating system's randomness (below ``SEED_LIMIT``)."""
    return [int.from_bytes(entropy(4), "big") % SEED_LIMIT for _ in range(count)]


def graph_optimum(
    dag: Dag,
    speeds_and_slots: Sequence[tuple[float, int]],
    seconds: float,
    build_cost: float | None = None,
) -> tuple[dict[str, object], float, dict[str, object] | None]:
    """The optimum of ``dag`` on these machines (every one builds everything: the bench fleet
    and the local machine all offer the graphs' features), the makespan of offload's own plan
    with exact durations (tuned, as a run with history tunes it), which is the solver's first
    hint, and with ``build_cost`` the floor
    (the optimum with that cost added to every build)."""
    machines = [
        MachineSlotSpec(f"m{i}", speed, slots) for i, (speed, slots) in enumerate(speeds_and_slots)
    ]
    jobs = [Job(node.name, node.work, tuple(node.deps)) for node in dag.nodes]
    plan = simulate_tuned(jobs, machines, budget=math.inf)
    hint = {r.job: (r.machine, r.start) for r in plan.schedule}
    best = optimum(jobs, machines, seconds=seconds, hint=hint).as_dict()
    if build_cost is None:
        return best, plan.makespan, None
    floor = optimum(jobs, machines, seconds=seconds, hint=hint, cost=build_cost)
    # Unsolved, its answer would be the lower bound without the cost: no floor at all.
    return best, plan.makespan, floor.as_dict() if floor.solved else None


def measure_build_cost(bench: Bench, argv: Sequence[str]) -> float | None:
    """The median seconds of a trivial build on the fleet, request to answer (None: the run
    failed, said in the log), from ``COST_LINKS`` of them in a chain (one at a time, as a
    graph's critical path has them), remote only."""
    links = [
        DagNode(f"fresh-cost-{i:02d}", 0.0, (f"fresh-cost-{i - 1:02d}",) if i else ())
        for i in range(COST_LINKS)
    ]
    nix_file = bench.work / "fresh-cost.nix"
    nix_file.write_text(
        to_nix_expression(Dag(tuple(links)), salt=f"fresh-cost-{secrets.token_hex(4)}"),
        encoding="utf-8",
    )
    command = [*argv, "build", str(nix_file), "--builders", f"@{bench.fleet.machines_file}"]
    try:
        done = run_timed(
            [*command, "-j", "0", "--no-out-link", "--json"], env=bench.env, timeout=120
        )
    finally:
        nix_file.unlink(missing_ok=True)
    if done.returncode != 0:
        log(f"fresh: the chain of trivial builds failed, no floor: {done.tail()}")
        return None
    return per_build(json_events(done.stdout)).get("building")


def ratios(graph: Mapping[str, Any]) -> dict[str, float | None]:
    """first/optimum, second/optimum, nix/optimum and nix/first of one graph's record."""
    best = float(graph["optimum"]["makespan"])
    wall = {
        r["run"]: float(r["wall_s"]) for r in graph["runs"] if r["status"] == "ok" and r["wall_s"]
    }
    out: dict[str, float | None] = {
        f"{run}/optimum": (wall[run] / best if run in wall and best > 0 else None) for run in RUNS
    }
    out["nix/first"] = wall["nix"] / wall["first"] if {"nix", "first"} <= wall.keys() else None
    return out


def shape_medians(section: Mapping[str, Any]) -> dict[str, tuple[int, dict[str, float | None]]]:
    """Per shape (in the order met): how many graphs it has, and the median of each of
    ``ratios`` over those that have it (None: none has)."""
    found: dict[str, list[dict[str, float | None]]] = {}
    for graph in section["graphs"]:
        found.setdefault(graph["shape"], []).append(ratios(graph))
    out: dict[str, tuple[int, dict[str, float | None]]] = {}
    for shape, rows in found.items():
        medians: dict[str, float | None] = {}
        for key in rows[0]:
            values = [value for row in rows if (value := row[key]) is not None]
            medians[key] = statistics.median(values) if values else None
        out[shape] = (len(rows), medians)
    return out


def _build(
    bench: Bench,
    argv: Sequence[str],
    dag: Dag,
    run: str,
    *,
    state: Path,
    logs: Path,
    timeout: float,
) -> dict[str, Any]:
    """One run of ``dag`` (``run`` of ``RUNS``), offload's with the state directory ``state``;
    Nix's and the one after it with the log directory ``logs``."""
    salt = f"fresh-{run}-{secrets.token_hex(4)}"
    nix_file = bench.work / f"fresh-{run}.nix"
    nix_file.write_text(to_nix_expression(dag, salt=salt), encoding="utf-8")
    builders = ["--builders", f"@{bench.fleet.machines_file}", "-j", "2", "--no-out-link"]
    if run == "nix":
        command = ["nix-build", str(nix_file), *builders, *NO_SUBSTITUTES]
    else:
        command = [*argv, "build", str(nix_file), *builders, "--json"]
    env = {**bench.env, "OFFLOAD_STATE_DIR": str(state)}
    if run in {"nix", "after-nix"}:
        env["NIX_LOG_DIR"] = str(logs)
    load = os.getloadavg()[0]
    done = run_timed(command, env=env, timeout=timeout)
    nix_file.unlink(missing_ok=True)
    ok = done.returncode == 0
    span = None if run == "nix" else parse_offload_events(done.stdout).run_s
    return {
        "run": run,
        "salt": salt,
        "status": "ok" if ok else ("timeout" if done.timed_out else "failed"),
        "wall_s": round(done.elapsed, 3),
        "span_s": None if span is None else round(span, 3),
        "loadavg_1m_before": round(load, 2),
        "error": None if ok else done.tail(),
    }


def fresh_section(bench: Bench, opts: Options, save: Save) -> dict[str, Any]:
    """``SEEDS_PER_SHAPE`` graphs per shape on freshly drawn seeds, each built first, second,
    by Nix and after Nix."""
    argv, quick = offload_argv(), opts.quick
    shapes = QUICK_SHAPES if quick else SHAPES
    nodes = QUICK_NODES if quick else NODES
    rounds = QUICK_SEEDS_PER_SHAPE if quick else SEEDS_PER_SHAPE
    seeds = draw_seeds(len(shapes) * rounds)
    section: dict[str, Any] = {
        "drawn": time.strftime("%Y-%m-%d %H:%M:%S"),
        "seed_source": "os.urandom",
        "nodes": nodes,
        "scale": 1.0,
        "seeds_per_shape": rounds,
        "solver_seconds": SOLVER_SECONDS,
        "build_cost_s": measure_build_cost(bench, argv),
        "graphs": [],
    }
    if section["build_cost_s"] is not None:
        log(f"fresh: a trivial build takes {section['build_cost_s']} s on the fleet")
    for shape, seed in zip(shapes * rounds, seeds, strict=True):
        dag = generate(shape, nodes, seed, prefix=f"fresh-{shape}{nodes}-s{seed}")
        _fresh_graph(bench, argv, dag, shape=shape, seed=seed, section=section, save=save)
    return section


def _fresh_graph(
    bench: Bench,
    argv: Sequence[str],
    dag: Dag,
    *,
    shape: str,
    seed: int,
    section: dict[str, Any],
    save: Save,
) -> None:
    """``dag``'s optimum and runs, added to ``section``'s graphs and saved as each run ends."""
    machines = bench.speeds_and_slots()
    best, plan, floor = graph_optimum(dag, machines, SOLVER_SECONDS, section["build_cost_s"])
    graph: dict[str, Any] = {
        "shape": shape,
        "seed": seed,
        "lower_bound": round(dag.lower_bound(machines), 3),
        "optimum": best,
        "floor": floor,
        "plan_s": round(plan, 3),
        "runs": [],
    }
    section["graphs"].append(graph)
    state = bench.work / f"fresh-state-{shape}-{seed}"  # empty: a first run
    logs = bench.work / f"fresh-nix-log-{shape}-{seed}"
    timeout = 10 * float(graph["lower_bound"]) + 60
    for run in RUNS:
        log(f"fresh {shape} seed {seed} (optimum {graph['optimum']['makespan']} s): {run}")
        where = state.with_name(state.name + "-after-nix") if run == "after-nix" else state
        record = _build(bench, argv, dag, run, state=where, logs=logs, timeout=timeout)
        graph["runs"].append(record)
        log(f"  -> {record['status']} in {record['wall_s']:.1f} s")
        save("fresh", section)
