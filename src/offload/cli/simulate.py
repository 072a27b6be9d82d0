"""`offload simulate DAG.json`: run the scheduler on a fake clock and compare with the bound.

Machines are given as ``name:speed:slots[:supported[:mandatory]]`` separated by commas, with
features joined by ``+`` (``big:4:2:big-parallel+kvm``). Without a features field a machine
has Nix 2.8's default ``system-features`` (benchmark, big-parallel, kvm, nixos-test), so a node
that needs another one (``cuda``) builds only where a machine says it has it, as with Nix; every
machine builds every system the graph names.

The graph's estimates stand for history's, so the plan is first tuned (``scheduler.search``) as
``offload build`` tunes a run whose every estimate history gives; ``--no-tune`` shows the plain
policy's plan.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import replace
from pathlib import Path

from offload.errors import ConfigError, SchedulerError, Unschedulable
from offload.numerals import is_decimal
from offload.scheduler.dag import Job
from offload.scheduler.nix_model import NixCosts, simulate_nix
from offload.scheduler.policy import MachineSlotSpec
from offload.scheduler.search import simulate_tuned
from offload.scheduler.simulate import SimResult

__all__ = ["DEFAULT_MACHINES", "jobs_from_dag", "parse_machines", "register", "run"]

DEFAULT_MACHINES = "local:1:2,fast:4:2,medium:2:2,slow:1:2"
# What a machine without a features field has: Nix 2.8's default system-features (globals.cc).
NIX_DEFAULT_FEATURES = frozenset({"benchmark", "big-parallel", "kvm", "nixos-test"})
# Bounds on what a user may ask for: the simulator makes every slot, and a log-normal sigma past
# this overflows a float (factors of e**(±3 sigma) are already absurd at 10).
MAX_SLOTS = 10_000
MAX_NOISE = 10.0
# Speeds are relative: six orders of magnitude either way is every machine there is, and keeps
# work / speed finite (1e-300 made every finish inf, and the policy found no best machine).
SPEEDS = (1e-6, 1e6)
# A speed as people write one: 4, 0.5, 1e-3 (ASCII, no "_" grouping).
_PLAIN_NUMBER = re.compile(r"[0-9]+(\.[0-9]*)?([eE][+-]?[0-9]+)?|\.[0-9]+([eE][+-]?[0-9]+)?")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "simulate",
        help="simulate scheduling a DAG file on imaginary machines",
        description="Schedule a DAG file on simulated machines and print the "
        "makespan next to the lower bound max(critical path / fastest, work / capacity).",
        epilog='A DAG file is JSON: {"nodes": [{"name": "n1", "work": 3.5, "deps": ["n0"], '
        '"features": ["big-parallel"], "system": "x86_64-linux"}, ...]}; work is seconds on '
        "a machine of speed 1, features and system are optional, nodes in any order. "
        "`offload demo` builds one (src/offload/data/sample.json).",
    )
    parser.add_argument(
        "dag", type=Path, metavar="DAG.json", help="the graph to schedule (-: standard input)"
    )
    parser.add_argument(
        "--machines",
        default=DEFAULT_MACHINES,
        metavar="SPEC",
        help=(
            "name:speed:slots[:features[:mandatory]],... with features joined by '+'"
            " (server:4:2:kvm+big-parallel); every machine builds every system"
            " (default: %(default)s)"
        ),
    )
    parser.add_argument(
        "--noise",
        type=float,
        default=0.0,
        help="sigma of a log-normal actual/estimate factor per job (default 0: exact)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for --noise")
    parser.add_argument("--no-speculation", action="store_true", help="never copy running jobs")
    parser.add_argument(
        "--no-tune",
        action="store_true",
        help="the plain policy: no search for a shorter plan first (offload build searches when "
        "history gives every estimate, as the graph's estimates stand for here)",
    )
    parser.add_argument(
        "--policy",
        choices=("offload", "nix"),
        default="offload",
        help="offload's scheduler, or Nix's own build hook (remote first, one derivation at a "
        "time, the least loaded builder by its load over its speed) (default: %(default)s)",
    )
    parser.add_argument(
        "--nix-version",
        type=_version,
        default=(2, 8),
        metavar="X.Y",
        help="the Nix whose hook --policy nix models: before 2.20 it divides load by speed in "
        "integers (default: 2.8)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object to stdout")
    parser.set_defaults(func=run)


def _version(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    if not (is_decimal(major) and is_decimal(minor) and len(text) < 12):
        raise argparse.ArgumentTypeError(f"{text!r} is not a Nix version such as 2.18")
    return int(major), int(minor)


def _features(text: str) -> frozenset[str]:
    return frozenset(f for f in text.split("+") if f)


def _shown(text: str, limit: int = 60) -> str:
    """``text`` quoted for an error line, cut short: it may be anything a user pasted."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def parse_machines(
    spec: str, *, systems: frozenset[str], features: frozenset[str]
) -> list[MachineSlotSpec]:
    machines: list[MachineSlotSpec] = []
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        fields = item.split(":")
        # A name printed in the tables: one line, no terminal escape.
        if not 3 <= len(fields) <= 5 or not fields[0] or not fields[0].isprintable():
            raise ConfigError(
                f"--machines: {_shown(item)} is not name:speed:slots[:features[:mandatory]]",
                # A ',' between features starts the next machine (a tester's kvm,big-parallel).
                hint=f"for example {DEFAULT_MACHINES}; features are joined by '+': a:4:2:kvm+x",
            )
        name, speed_text, slots_text = fields[:3]
        # float() and int() read "1_0", "+2" and other scripts' digits too.
        if not (is_decimal(slots_text) and _PLAIN_NUMBER.fullmatch(speed_text)):
            raise ConfigError(
                f"--machines: {_shown(item)}: speed must be a number and slots a whole number"
                f" (0 to {MAX_SLOTS})",
                hint=f"for example {DEFAULT_MACHINES}",
            )
        speed, slots = float(speed_text), int(slots_text)
        low, high = SPEEDS
        if not low <= speed <= high or not 0 <= slots <= MAX_SLOTS:  # a nan is neither
            raise ConfigError(
                f"--machines: {_shown(item)}: speed must be {low:g} to {high:g}"
                f" and slots 0 to {MAX_SLOTS}",
                hint=f"for example {DEFAULT_MACHINES}",
            )
        supported = _features(fields[3]) if len(fields) > 3 else features
        mandatory = _features(fields[4]) if len(fields) > 4 else frozenset()
        machines.append(MachineSlotSpec(name, speed, slots, systems, supported, mandatory))
    if not machines:
        raise ConfigError("--machines: no machines given", hint=f"for example {DEFAULT_MACHINES}")
    names = [m.name for m in machines]
    if len(set(names)) != len(names):
        raise ConfigError(
            f"--machines: duplicate machine names in {_shown(spec)}",
            hint="give each machine a name of its own",
        )
    if not any(m.slots for m in machines):
        raise ConfigError(
            "--machines: no machine has a slot", hint="give one slots > 0: name:speed:slots"
        )
    return machines


def jobs_from_dag(path: Path) -> list[Job]:
    from offload.dagfile import load_dag

    dag = load_dag(path)
    return [
        Job(node.name, node.work, node.deps, node.system or "builtin", node.features)
        for node in dag.nodes
    ]


def _print_text(result: SimResult) -> None:
    ratio = f"{result.ratio:.3f}x" if result.ratio is not None else "n/a"
    print(f"makespan     {result.makespan:10.2f} s")
    print(f"lower bound  {result.lower_bound:10.2f} s   (ratio {ratio})")
    print(
        f"critical path{result.critical_path:10.2f} s of work, total work {result.total_work:.2f} s"
    )
    if result.speculations:
        print(f"speculation  {result.speculations} copies started, {result.cancelled} cancelled")
    if result.failed or result.skipped:
        print(f"failed {len(result.failed)}, skipped {len(result.skipped)}")
    print()
    print(f"{'machine':<16} {'speed':>6} {'slots':>5} {'built':>6} {'busy s':>10} {'util':>6}")
    for m in result.machines:
        capacity = result.makespan * m.slots
        util = f"{100 * m.busy / capacity:5.1f}%" if capacity > 0 else "    -"
        print(f"{m.name:<16} {m.speed:>6g} {m.slots:>5} {m.built:>6} {m.busy:>10.2f} {util:>6}")


def run(args: argparse.Namespace) -> int:
    jobs = jobs_from_dag(Path("/dev/stdin") if str(args.dag) == "-" else args.dag)
    systems = frozenset(job.system for job in jobs)
    machines = parse_machines(args.machines, systems=systems, features=NIX_DEFAULT_FEATURES)
    if not 0 <= args.noise <= MAX_NOISE:
        raise ConfigError(
            f"--noise must be a number from 0 to {MAX_NOISE}",
            hint="the estimates' error (sigma): 0 is exact, 0.3 about 30% off",
        )
    if args.policy == "nix":
        costs = replace(NixCosts.measured(), integer_speed=args.nix_version < (2, 20))
        result = simulate_nix(jobs, machines, costs, noise=args.noise, seed=args.seed)
    else:
        try:
            # No wall budget: the same graph gives the same plan on any machine.
            result = simulate_tuned(
                jobs, machines, search=not args.no_tune, budget=math.inf, noise=args.noise,
                seed=args.seed, speculate=not args.no_speculation,
            )  # fmt: skip
        except Unschedulable as exc:
            # The scheduler's hint is offload build's (--keep-going), which simulate has not.
            hint = (
                "give --machines one that offers what it needs and requires nothing else"
                " (name:speed:slots:features:mandatory, features joined by +)"
            )
            raise SchedulerError(exc.message, hint=hint) from None
    if args.json:
        print(json.dumps(result.as_dict(), indent=None))
    else:
        _print_text(result)
    if result.failed:  # Nix's hook: run, those failed, as nix-build exits 1 for them
        more = f" (and {len(result.failed) - 1} more jobs)" if len(result.failed) > 1 else ""
        raise SchedulerError(
            f"no machine can build {result.failed[0]}{more}",
            hint="give --machines one with those features: name:speed:slots:feature+feature",
        )
    return 0
