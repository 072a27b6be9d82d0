"""Paired A/B of a no-op ``offload build``: every requested output already valid here.

``python -m bench.ab_noop --a OLD/src --b NEW/src --pairs 5 [--away]`` brings up the bench
fleet (``bench.context.FLEET_SPECS``) under /tmp, builds ``--trivial`` trivial derivations once
(remote-only), then runs the same ``offload build`` again with each tree in turn, A then B, then
B then A (``bench.ab_fixed``), and ``nix-build`` of the same file after each pair: nothing is
left to build, so what is timed is start-up, evaluation, whatever the run waits for, and
shutdown. ``--away`` adds a machines line to a builder that never answers (a loopback port that
accepts and never speaks: a laptop's builder left at home). Run it under the bench lock (``flock
/tmp/offload-bench.lock ...``).
"""

from __future__ import annotations

import os
import secrets
import socket
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.ab_fixed import keep_records, pair_order, paired_fleet, tree_parser
from bench.context import log
from bench.measure import run_timed
from offload.dagfile import Dag, DagNode, to_nix_expression
from offload.fleet import Fleet

__all__ = ["away_machines", "main"]


def away_machines(fleet: Fleet, work: Path, port: int) -> tuple[Path, Path]:
    """A machines file of the fleet's members and ``away`` (``port`` on loopback), and the
    ssh config that names it and includes the fleet's (ssh reads one ``-F``)."""
    config = work / "away_ssh_config"
    config.write_text(
        f"Host away\n  HostName 127.0.0.1\n  Port {port}\n  User root\n"
        f"  IdentityFile {fleet.client_key}\n  BatchMode yes\nInclude {fleet.ssh_config}\n"
    )
    machines = work / "away_machines"
    line = f"ssh://away {fleet.system} {fleet.client_key} 4 8\n"
    machines.write_text(fleet.machines_file.read_text() + line)
    return machines, config


def _timed(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    done = run_timed(argv, env=env, timeout=120)
    record: dict[str, Any] = {"ok": done.returncode == 0, "wall_s": round(done.elapsed, 4)}
    if not record["ok"]:
        record["error"] = done.tail()
    return record


def _summary(records: dict[str, list[dict[str, Any]]]) -> None:
    for who, runs in records.items():
        walls = [r["wall_s"] for r in runs if r["ok"]]
        if walls:
            spread = f"{min(walls):.3f}-{max(walls):.3f}"
            print(f"{who}: median {statistics.median(walls):.3f} s ({spread})")
        else:
            print(f"{who}: no run succeeded")
    pairs = [
        b["wall_s"] / a["wall_s"]
        for a, b in zip(records["A"], records["B"], strict=True)
        if a["ok"] and b["ok"]
    ]
    if pairs:
        print(f"B/A wall, {len(pairs)} pairs: median {statistics.median(pairs):.3f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = tree_parser(__doc__, pairs=5)
    parser.add_argument("--trivial", type=int, default=100)
    parser.add_argument("--away", action="store_true", help="and a builder that never answers")
    args = parser.parse_args(argv)
    records: dict[str, list[dict[str, Any]]] = {"A": [], "B": [], "nix-build": []}
    with paired_fleet(args.a, args.b, prefix="oan") as (work, fleet, envs), socket.socket() as away:
        nix_file = work / "noop.nix"
        dag = Dag(tuple(DagNode(f"ab-n{i:04d}", 0.0) for i in range(args.trivial)))
        nix_file.write_text(to_nix_expression(dag, salt=secrets.token_hex(4)))
        build = [sys.executable, "-m", "offload", "build", str(nix_file), "--no-out-link"]
        first = _timed([*build, "--builders", f"@{fleet.machines_file}", "-j", "0"], envs["A"])
        if not first["ok"]:
            raise SystemExit(f"ab_noop: the first build failed: {first['error']}")
        machines = fleet.machines_file
        if args.away:
            away.bind(("127.0.0.1", 0))
            away.listen(16)
            machines, config = away_machines(fleet, work, away.getsockname()[1])
            for env in envs.values():
                env["NIX_SSHOPTS"] = env["NIX_SSHOPTS"].replace(str(fleet.ssh_config), str(config))
        for pair in range(args.pairs):
            for tree in pair_order(pair):
                record = _timed([*build, "--builders", f"@{machines}", "-j", "0"], envs[tree])
                records[tree].append(record)
                log(f"pair {pair + 1} {tree}: {record['wall_s']:.3f} s ok={record['ok']}")
            records["nix-build"].append(
                _timed(["nix-build", str(nix_file), "--no-out-link"], envs["A"])
            )
    keep_records(args.json, records)
    _summary(records)
    return 0


if __name__ == "__main__":
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    sys.exit(main())
