"""`make seeds`: the policy over many random graphs against the optimum, so no one tunes to a seed.

For each shape of ``bench/graphs.py`` (layered, chain, wide, huge = skewed, bootstrap) and each
of ``--seeds`` seeds from ``--base`` (``--fresh`` draws a base at random), a graph of ``--nodes``
nodes at scale 1 is simulated on the bench fleet (the local machine and three builders, speeds
1, 4, 2, 1, two slots each; the 4x and 2x builders offer ``big-parallel``) and compared with its
optimum (``bench/optimum.py``: CP-SAT, ``--solver-seconds`` per graph, the proven gap reported;
the lower bound when it cannot solve). The true durations are the graph's. Conditions:

- ``history``: offload's policy with exact estimates (history knows every build);
- ``noisy``: estimates off by a log-normal factor of sigma 0.3 (history knows roughly);
- ``first``: a first run: every estimate a guess (``offload.scheduler.policy.guesses``), learnt
  within the run from the run's own builds, as the executor does;
- ``nix``: Nix 2.8's hook (``offload.scheduler.nix_model``, this machine's measured costs),
  which uses no estimates;
- ``nixlogs``: a first run of offload after Nix's hook built the same graph: each estimate is
  the time Nix's log of the build shows (``offload.history.nix_logs``: from the hook's accept
  to the build's end, on whichever machine the hook chose), read as work at the fleet's fastest
  speed, as ``offload.history.estimates`` reads it.

Reported per shape and condition: the median, 90th percentile and worst of makespan / optimum.
Optima are cached in ``bench/results/optima.json`` (by shape, nodes, seed and fleet).
``--report`` writes the section ``seeds`` of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import secrets
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

if __package__ in {None, ""}:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.graphs import generate
from bench.optimum import optimum
from bench.sections import put_section
from offload.names import LOCAL
from offload.scheduler.dag import Job
from offload.scheduler.nix_model import NixCosts, simulate_nix
from offload.scheduler.policy import MachineSlotSpec
from offload.scheduler.policy.guesses import Guesses, guessed_work
from offload.scheduler.simulate import simulate

__all__ = ["CONDITIONS", "FLEET", "SHAPES", "evaluate", "main"]

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "bench" / "results" / "optima.json"
SHAPES = ("layered", "chain", "wide", "huge", "bootstrap")
CONDITIONS = ("history", "noisy", "first", "nixlogs", "nix")
NOISE = 0.3
TARGETS = {"history": 1.05, "noisy": 1.15}
_SYSTEM = "x86_64-linux"
_BIG = frozenset({"big-parallel"})
FLEET = (
    MachineSlotSpec(LOCAL, 1.0, 2, frozenset({_SYSTEM})),
    MachineSlotSpec("fast", 4.0, 2, frozenset({_SYSTEM}), _BIG),
    MachineSlotSpec("medium", 2.0, 2, frozenset({_SYSTEM}), _BIG),
    MachineSlotSpec("slow", 1.0, 2, frozenset({_SYSTEM})),
)


def graph_jobs(shape: str, nodes: int, seed: int) -> list[Job]:
    dag = generate(shape, nodes, seed)
    return [Job(n.name, n.work, n.deps, _SYSTEM, n.features) for n in dag.nodes]


def _with(jobs: Sequence[Job], estimate: Callable[[Job], float]) -> list[Job]:
    return [Job(j.id, estimate(j), j.deps, j.system, j.required_features) for j in jobs]


def run_condition(condition: str, jobs: Sequence[Job], seed: int) -> float:
    """The makespan of one condition on ``jobs`` (their work is the truth)."""
    actual = {j.id: j.work_estimate for j in jobs}
    machines = list(FLEET)
    if condition == "history":
        return simulate(jobs, machines).makespan
    if condition == "noisy":
        rng = random.Random(seed)
        noisy = _with(jobs, lambda j: j.work_estimate * rng.lognormvariate(0.0, NOISE))
        return simulate(noisy, machines, actual=actual).makespan
    if condition == "first":
        guessed = _with(jobs, lambda j: guessed_work(j.required_features))
        learn = Guesses.for_jobs(guessed, dict.fromkeys(actual, 1.0))
        return simulate(guessed, machines, actual=actual, guessed=actual, guesses=learn).makespan
    if condition == "nixlogs":
        logged = nix_log_times(jobs)
        fastest = max(m.speed for m in machines)
        read = _with(jobs, lambda j: logged[j.id] * fastest)
        return simulate(read, machines, actual=actual).makespan
    if condition == "nix":
        return simulate_nix(jobs, machines, NixCosts.measured()).makespan
    raise ValueError(condition)


def nix_log_times(jobs: Sequence[Job]) -> dict[str, float]:
    """Each job's time in the build log Nix's hook leaves (``nixlogs``): Nix opens a remote
    build's log once the hook accepted, after its handshakes, and closes it when the outputs
    are back."""
    costs = NixCosts.measured()
    return {
        r.job: r.end - r.start - (0.0 if r.machine == LOCAL else costs.accept)
        for r in simulate_nix(jobs, list(FLEET), costs).schedule
    }


def _optimum(
    cache: dict[str, dict[str, object]], key: str, jobs: Sequence[Job], seconds: float
) -> dict[str, object]:
    if key not in cache:
        hint = {r.job: (r.machine, r.start) for r in simulate(jobs, list(FLEET)).schedule}
        cache[key] = optimum(jobs, FLEET, seconds=seconds, hint=hint).as_dict()
    return cache[key]


def evaluate(
    shapes: Sequence[str], seeds: Sequence[int], nodes: int, seconds: float
) -> dict[str, object]:
    """Per shape: each seed's optimum and each condition's makespan / optimum."""
    cache: dict[str, dict[str, object]] = (
        json.loads(CACHE.read_text(encoding="utf-8")) if CACHE.exists() else {}
    )
    fleet = ",".join(f"{m.name}:{m.speed:g}x{m.slots}" for m in FLEET)
    found: dict[str, object] = {}
    try:
        for shape in shapes:
            rows = []
            for seed in seeds:
                jobs = graph_jobs(shape, nodes, seed)
                best = _optimum(cache, f"{shape}/{nodes}/{seed}/{fleet}", jobs, seconds)
                opt = float(best["makespan"])  # type: ignore[arg-type]
                ratios = {c: run_condition(c, jobs, seed) / opt for c in CONDITIONS}
                rows.append({"seed": seed, "optimum": best, "ratios": ratios})
            found[shape] = rows
            print(f"{shape}: done", file=sys.stderr)
    finally:
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        CACHE.write_text(json.dumps(cache, indent=0, sort_keys=True) + "\n", encoding="utf-8")
    return found


def _p90(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]


def summary(found: dict[str, object]) -> list[str]:
    lines = [
        "| shape | condition | median | p90 | worst | target (p90) |",
        "|---|---|---|---|---|---|",
    ]
    for shape, rows in found.items():
        assert isinstance(rows, list)
        for condition in CONDITIONS:
            values = [r["ratios"][condition] for r in rows]
            target = TARGETS.get(condition)
            met = (
                ""
                if target is None
                else f"{target:.2f}x: {'met' if _p90(values) <= target else 'NOT met'}"
            )
            lines.append(
                f"| {shape} | {condition} | {statistics.median(values):.3f} | {_p90(values):.3f} "
                f"| {max(values):.3f} | {met} |"
            )
    return lines


def solver_line(found: dict[str, object]) -> str:
    rows = [r for shape_rows in found.values() for r in shape_rows]  # type: ignore[attr-defined]
    solved = [r["optimum"] for r in rows if r["optimum"]["solved"]]
    proven = sum(1 for o in solved if o["gap"] == 0)
    worst = max((o["gap"] for o in solved), default=0.0)
    return (
        f"{len(rows)} graphs: {len(solved)} solved ({proven} proven optimal, worst gap "
        f"{worst:.1%}), {len(rows) - len(solved)} compared with the lower bound instead."
    )


def render(found: dict[str, object], command: str) -> str:
    return "\n".join(
        [
            "## Many seeds against the optimum (simulated)",
            "",
            (
                f"`{command}`: offload's policy and Nix's hook in the simulator over random "
                "graphs of every shape, makespan / optimum (an exact solver's, "
                "`bench/optimum.py`; transfers and per-build costs free for offload, Nix's "
                "measured per-build costs for Nix). `history`: exact estimates; `noisy`: "
                "estimates off by 30% (log-normal); `first`: a first run, every estimate a "
                "guess learnt within the run; `nixlogs`: a first run after Nix's hook built "
                "the graph, each estimate the time in Nix's build log, read at the fastest "
                "speed."
            ),
            "",
            solver_line(found),
            "",
            *summary(found),
            "",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--base", type=int, default=1000, help="first seed")
    parser.add_argument("--fresh", action="store_true", help="draw the first seed at random")
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--solver-seconds", type=float, default=10.0)
    parser.add_argument("--shapes", nargs="+", choices=SHAPES, default=list(SHAPES))
    parser.add_argument("--json", type=Path, help="write every ratio here")
    parser.add_argument("--report", action="store_true", help="write docs/BENCHMARKS.md's section")
    args = parser.parse_args(argv)
    base = secrets.randbelow(10**6) if args.fresh else args.base
    found = evaluate(args.shapes, range(base, base + args.seeds), args.nodes, args.solver_seconds)
    command = f"python bench/seeds.py --seeds {args.seeds} --base {base} --nodes {args.nodes}"
    text = render(found, command)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(found, indent=1) + "\n", encoding="utf-8")
    if args.report:
        doc = REPO / "docs" / "BENCHMARKS.md"
        doc.write_text(put_section(doc.read_text(encoding="utf-8"), "seeds", text), "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
