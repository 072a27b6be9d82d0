"""Paired A/B of ``offload build``'s fixed costs: two source trees, alternated on one fleet.

``python -m bench.ab_fixed --a OLD/src --b NEW/src --pairs 6`` brings up the bench fleet
(``bench.context.FLEET_SPECS``) under /tmp, compiles each tree's bytecode, and builds
``--trivial`` trivial derivations remote-only (``-j 0``) with each tree in turn, A then B, then
B then A, and so on (fresh outputs each time, a state directory per tree so both keep the
same history); ``--lag S`` puts the builders S seconds further away each way
(``bench.lag_proxy``). It prints each run's wall time and ``bench.fixed_costs`` phases, the
medians per tree and the median of the paired ratios B/A; ``--json FILE`` keeps the records.
Run it under the bench lock (``flock /tmp/offload-bench.lock ...``): it times processes, and
others' must not overlap.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.context import FLEET_SPECS, log
from bench.fixed_costs import PHASES, phases
from bench.measure import json_events, run_timed
from offload.dagfile import Dag, DagNode, to_nix_expression
from offload.fleet import Fleet, MemberSpec, fleet_down, fleet_up

__all__ = [
    "keep_records",
    "lagged",
    "main",
    "pair_order",
    "paired_fleet",
    "tree_env",
    "tree_parser",
]


def tree_env(base: Mapping[str, str], src: Path, state: Path) -> dict[str, str]:
    env = {k: v for k, v in base.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(src)
    env["OFFLOAD_STATE_DIR"] = str(state)
    env["NIX_CONFIG"] = "substituters =\nbuilders-use-substitutes = false\n"
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(src / "offload")],
        env=env,
        check=True,
        timeout=300,
        stdout=subprocess.DEVNULL,
    )
    return env


@contextlib.contextmanager
def paired_fleet(
    a: Path, b: Path, *, prefix: str
) -> Iterator[tuple[Path, Fleet, dict[str, dict[str, str]]]]:
    """The bench fleet up in a scratch directory under /tmp, with the environment of tree A's
    and tree B's src (``tree_env``, a state directory each): (scratch, fleet, envs by "A" and
    "B"); all of it gone afterwards."""
    work = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    fleet_dir = work / "f"
    try:
        fleet = fleet_up(fleet_dir, [MemberSpec.parse(s) for s in FLEET_SPECS])
        base = fleet.env()
        envs = {
            "A": tree_env(base, a.resolve(), work / "state-a"),
            "B": tree_env(base, b.resolve(), work / "state-b"),
        }
        yield work, fleet, envs
    finally:
        fleet_down(fleet_dir, purge=True)
        shutil.rmtree(work, ignore_errors=True)


def tree_parser(doc: str, pairs: int) -> argparse.ArgumentParser:
    """The arguments every paired A/B takes: the two trees, how many pairs, where to keep the
    records (``--json``)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--a", type=Path, required=True, help="tree A's src directory")
    parser.add_argument("--b", type=Path, required=True, help="tree B's src directory")
    parser.add_argument("--pairs", type=int, default=pairs)
    parser.add_argument("--json", type=Path, help="write every record here")
    return parser


def keep_records(path: Path | None, records: object) -> None:
    """The records written to ``--json``'s file, if one was named."""
    if path is not None:
        path.write_text(json.dumps(records, indent=1) + "\n")


def pair_order(pair: int) -> tuple[str, str]:
    """Which tree runs first in pair ``pair``: A, then B, then B first, and so on."""
    return ("A", "B") if pair % 2 == 0 else ("B", "A")


def _one(work: Path, machines: Path, env: Mapping[str, str], label: str, n: int) -> dict[str, Any]:
    nix_file = work / f"ab-{label}.nix"
    dag = Dag(tuple(DagNode(f"ab-n{i:04d}", 0.0) for i in range(n)))
    nix_file.write_text(to_nix_expression(dag, salt=f"{label}-{secrets.token_hex(4)}"))
    argv = [sys.executable, "-m", "offload", "build", str(nix_file), "--builders", f"@{machines}"]
    argv += ["-j", "0", "--no-out-link", "--json"]
    spawned = time.time()
    done = run_timed(argv, env=env, timeout=120)
    if done.returncode != 0:
        return {"ok": False, "wall_s": done.elapsed, "error": done.tail()}
    return {
        "ok": True,
        "wall_s": round(done.elapsed, 4),
        "phases": phases(spawned, spawned + done.elapsed, json_events(done.stdout)),
    }


def _summary(records: Mapping[str, list[dict[str, Any]]]) -> None:
    for tree, runs in records.items():
        ok = [r for r in runs if r["ok"]]
        if not ok:
            print(f"{tree}: no run succeeded")
            continue
        line = f"{tree}: wall {statistics.median(r['wall_s'] for r in ok):.3f}"
        for phase, _ in PHASES:
            line += f" | {phase} {statistics.median(r['phases'].get(phase, 0.0) for r in ok):.3f}"
        print(line)
    pairs = [
        b["wall_s"] / a["wall_s"]
        for a, b in zip(records["A"], records["B"], strict=True)
        if a["ok"] and b["ok"]
    ]
    if pairs:
        shown = ", ".join(f"{p:.3f}" for p in pairs)
        print(f"B/A wall, {len(pairs)} pairs: median {statistics.median(pairs):.3f} ({shown})")


def lagged(env: dict[str, str], work: Path, seconds: float) -> None:
    """``env``'s ssh made to reach the fleet through ``bench.lag_proxy``, ``seconds`` each way:
    an ssh config of its own sets the ProxyCommand, then includes the fleet's."""
    sshopts = env["NIX_SSHOPTS"].split()
    fleet_config = sshopts[sshopts.index("-F") + 1]
    config = work / "lag_ssh_config"
    proxy = Path(__file__).with_name("lag_proxy.py")
    config.write_text(
        f"Host *\n  ProxyCommand {sys.executable} {proxy} %h %p\nInclude {fleet_config}\n"
    )
    env["NIX_SSHOPTS"] = env["NIX_SSHOPTS"].replace(fleet_config, str(config))
    env["LAG_SECONDS"] = str(seconds)


def main(argv: Sequence[str] | None = None) -> int:
    parser = tree_parser(__doc__, pairs=5)
    parser.add_argument("--trivial", type=int, default=100)
    parser.add_argument(
        "--lag", type=float, default=0.0, help="seconds added each way to the builders (lag_proxy)"
    )
    args = parser.parse_args(argv)
    records: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
    with paired_fleet(args.a, args.b, prefix="oab") as (work, fleet, envs):
        if args.lag > 0:
            for env in envs.values():
                lagged(env, work, args.lag)
        for pair in range(args.pairs):
            for tree in pair_order(pair):
                record = _one(work, fleet.machines_file, envs[tree], f"{tree}{pair}", args.trivial)
                records[tree].append(record)
                log(f"pair {pair + 1} {tree}: {record['wall_s']:.3f} s ok={record['ok']}")
    keep_records(args.json, records)
    _summary(records)
    return 0


if __name__ == "__main__":
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    sys.exit(main())
