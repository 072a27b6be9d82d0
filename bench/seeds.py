"""`make seeds`: the policy over many random graphs against the optimum, so no one tunes to a seed.

For each shape of ``bench/graphs.py`` (layered, chain, wide, huge = skewed, bootstrap) and each
of ``--seeds`` seeds from ``--base`` (``--fresh`` draws a base at random), a graph of ``--nodes``
nodes at scale 1 is simulated on the bench fleet (the local machine and three builders, speeds
1, 4, 2, 1, two slots each; the 4x and 2x builders offer ``big-parallel``) and compared with its
optimum (``bench/optimum.py``: CP-SAT, ``--solver-seconds`` per graph, the proven gap reported;
the lower bound when it cannot solve). The true durations are the graph's. Conditions:

- ``history``: offload's policy with exact estimates (history knows every build), its plan
  tuned first as ``offload build`` tunes it (``offload.scheduler.search``);
- ``noisy``: estimates off by a log-normal factor of sigma 0.3 (history knows roughly), the plan
  tuned to them and carried out with the true durations; drawn
  ``NOISE_DRAWS`` times per graph from a stream of their own (not the graph's), each draw one
  sample of the distribution;
- ``first``: a first run: every estimate a guess (``offload.scheduler.policy.guesses``), learnt
  within the run from the run's own builds, as the executor does;
- ``nix``: Nix 2.8's hook (``offload.scheduler.nix_model``, this machine's measured costs),
  which uses no estimates;
- ``nixlogs``: a first run of offload after Nix's hook built the same graph: each estimate is
  the time Nix's log of the build shows (``offload.history.nix_logs``: from the hook's accept
  to the build's end, on whichever machine the hook chose), read as work at the fleet's fastest
  speed, as ``offload.history.estimates`` reads it.

Reported per shape and condition: the median, 90th percentile and worst of makespan / optimum,
where "optimum" is two numbers (``bench/verdicts.py``): the best schedule known (the solver's,
or any condition's own schedule when shorter: each is a schedule of the true durations) and the
bound the solver proved; a target is met, NOT met or undecided on them. Optima are cached in
``bench/results/optima.json``, keyed by the graph's and the fleet's content, the solver's
seconds and the source of the solver and of the bound, so a changed generator or model never
reads an old answer. ``--report`` writes the section ``seeds`` of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import secrets
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in {None, ""}:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.graphs import generate
from bench.optimum import optimum
from bench.sections import put_section
from bench.verdicts import UNDECIDED, judge, p90
from offload.names import LOCAL
from offload.scheduler.dag import Job
from offload.scheduler.nix_model import NixCosts, simulate_nix
from offload.scheduler.policy import MachineSlotSpec
from offload.scheduler.policy.guesses import Guesses, guessed_work
from offload.scheduler.search import simulate_tuned
from offload.scheduler.simulate import simulate

__all__ = ["CONDITIONS", "FLEET", "SHAPES", "evaluate", "main"]

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "bench" / "results" / "optima.json"
VERDICTS = REPO / "bench" / "results" / "seeds.json"  # read by bench/report.py's targets table
SHAPES = ("layered", "chain", "wide", "huge", "bootstrap")
CONDITIONS = ("history", "noisy", "first", "nixlogs", "nix")
NOISE = 0.3
NOISE_DRAWS = 5
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


def run_condition(condition: str, jobs: Sequence[Job], seed: int, draw: int = 0) -> float:
    """The makespan of one condition on ``jobs`` (their work is the truth); ``draw`` picks the
    noise of ``noisy``."""
    actual = {j.id: j.work_estimate for j in jobs}
    machines = list(FLEET)
    if condition == "history":
        return tuned_run(jobs, actual)
    if condition == "noisy":
        # A stream of its own: the graph's generator drew its works from Random(seed).
        rng = random.Random(f"noise/{seed}/{draw}")
        noisy = _with(jobs, lambda j: j.work_estimate * rng.lognormvariate(0.0, NOISE))
        return tuned_run(noisy, actual)
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


def tuned_run(jobs: Sequence[Job], actual: Mapping[str, float]) -> float:
    """The makespan of a run whose every estimate is history's, as ``offload build`` runs it:
    the plan tuned (``offload.scheduler.search``; no wall-clock budget here, so the result does
    not hang on this machine's speed), then carried out with the true durations."""
    return simulate_tuned(jobs, FLEET, budget=math.inf, actual=actual).makespan


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
    cache: dict[str, dict[str, object]], jobs: Sequence[Job], seconds: float
) -> dict[str, object]:
    key = optimum_key(jobs, seconds)
    if key not in cache:
        hint = {r.job: (r.machine, r.start) for r in simulate(jobs, list(FLEET)).schedule}
        cache[key] = optimum(jobs, FLEET, seconds=seconds, hint=hint).as_dict()
    return cache[key]


def optimum_key(jobs: Sequence[Job], seconds: float) -> str:
    """What a cached optimum depends on: the jobs, the fleet, the solver's seconds, and the
    source of the solver and of the lower bound (the policy, which gives the hint, only ever
    makes the answer shorter, and the evaluation takes the shorter of the two anyway)."""
    digest = hashlib.sha256()
    for job in jobs:
        features = ",".join(sorted(job.required_features))
        digest.update(f"{job.id}|{job.work_estimate!r}|{','.join(job.deps)}|{features};".encode())
    digest.update(repr(FLEET).encode())
    digest.update(f"{seconds!r}".encode())
    sources = ("bench/optimum.py", "bench/window_bound.py", "src/offload/scheduler/bound.py")
    for source in (REPO / path for path in sources):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:32]


@dataclass(frozen=True)
class SeedRow:
    """One graph: its solver answer, the best schedule known and the bound (``bench/verdicts``),
    and each condition's makespans (``NOISE_DRAWS`` of them for ``noisy``, one otherwise)."""

    seed: int
    optimum: dict[str, object]
    best: float
    bound: float
    makespans: dict[str, list[float]]

    def triples(self, condition: str) -> list[tuple[float, float, float]]:
        return [(m, self.best, self.bound) for m in self.makespans[condition]]


Found = dict[str, list[SeedRow]]


def evaluate(shapes: Sequence[str], seeds: Sequence[int], nodes: int, seconds: float) -> Found:
    """Per shape, each seed's row."""
    cache: dict[str, dict[str, object]] = (
        json.loads(CACHE.read_text(encoding="utf-8")) if CACHE.exists() else {}
    )
    found: Found = {}
    try:
        for shape in shapes:
            found[shape] = [seed_row(cache, shape, nodes, seed, seconds) for seed in seeds]
            print(f"{shape}: done", file=sys.stderr)
    finally:
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        CACHE.write_text(json.dumps(cache, indent=0, sort_keys=True) + "\n", encoding="utf-8")
    return found


def seed_row(
    cache: dict[str, dict[str, object]], shape: str, nodes: int, seed: int, seconds: float
) -> SeedRow:
    jobs = graph_jobs(shape, nodes, seed)
    solved = _optimum(cache, jobs, seconds)
    makespans = {
        c: [run_condition(c, jobs, seed, d) for d in range(NOISE_DRAWS if c == "noisy" else 1)]
        for c in CONDITIONS
    }
    # Every condition but Nix's (which pays per-build costs the model has not) is a schedule
    # of the true durations: the optimum is no longer than the shortest of them.
    schedules = [m for c, ms in makespans.items() if c != "nix" for m in ms]
    best = min([_number(solved["makespan"]), *schedules])
    bound = min(_number(solved["bound"]), best)
    return SeedRow(seed, solved, best, bound, makespans)


def _number(value: object) -> float:
    assert isinstance(value, int | float)
    return float(value)


def summary(found: Found) -> list[str]:
    lines = [
        "| shape | condition | runs | median | p90 | worst | target (p90) |",
        "|---|---|---|---|---|---|---|",
    ]
    for shape, rows in found.items():
        for condition in CONDITIONS:
            triples = [t for row in rows for t in row.triples(condition)]
            values = [m / best for m, best, _ in triples]
            p90_cell, met, target = f"{p90(values):.3f}", "", TARGETS.get(condition)
            if target is not None:
                verdict = judge(triples, target, p90)
                p90_cell, met = verdict.text(), f"{target:.2f}x: {verdict.verdict}"
            lines.append(
                f"| {shape} | {condition} | {len(values)} | {statistics.median(values):.3f} "
                f"| {p90_cell} | {max(values):.3f} | {met} |"
            )
    return lines


def verdict_rows(found: Found, command: str) -> dict[str, Any]:
    """What the report's targets table says of the seed sets (``bench/report_seeds.py``): each
    shape's p90 per condition with a target, judged."""
    rows = []
    for shape, seed_rows in found.items():
        for condition, target in TARGETS.items():
            triples = [t for row in seed_rows for t in row.triples(condition)]
            verdict = judge(triples, target, p90)
            rows.append(
                {
                    "shape": shape,
                    "condition": condition,
                    "runs": len(triples),
                    "graphs": len(seed_rows),
                    "target": target,
                    "p90": round(verdict.found, 6),
                    "p90_bound": round(verdict.bound, 6),
                    "verdict": verdict.verdict,
                }
            )
    return {"command": command, "rows": rows}


def solver_line(found: Found) -> str:
    rows = [row for shape_rows in found.values() for row in shape_rows]
    solved = sum(1 for row in rows if row.optimum["solved"])
    proven = sum(1 for row in rows if row.bound >= row.best - 1e-9)
    worst = max(((row.best - row.bound) / row.bound for row in rows), default=0.0)
    unsolved = len(rows) - solved
    rest = f", {unsolved} are offload's own plan against the lower bound" if unsolved else ""
    return (
        f"{len(rows)} graphs: the solver found a schedule for {solved} in time{rest}; "
        f"{proven} proven optimal, the widest gap between the best schedule known and the bound "
        f"{worst:.1%} (where a gap straddles a target, its verdict is {UNDECIDED})."
    )


def render(found: Found, command: str) -> str:
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
        rows = {shape: [asdict(row) for row in shape_rows] for shape, shape_rows in found.items()}
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    if args.report:
        doc = REPO / "docs" / "BENCHMARKS.md"
        doc.write_text(put_section(doc.read_text(encoding="utf-8"), "seeds", text), "utf-8")
        VERDICTS.write_text(json.dumps(verdict_rows(found, command), indent=1) + "\n", "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
