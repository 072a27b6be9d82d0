"""Where ``offload build``'s wall time goes beyond the plan: its fixed costs, phase by phase.

A run is split by the marks offload itself reports (its ``--json`` ``timing`` event, see
``offload.marks``) and its job events, between the outside start of the process and its exit:

- ``interpreter``: process start to "imported" (Python, the parser and what it imports);
- ``settings``: to "settings" (nix.conf, the machines file, the state directory);
- ``evaluation``: to "evaluated" (the rest of offload build's imports, while the builders' ssh
  masters connect, then nix-instantiate, while their sessions open);
- ``handshakes``: to "answered" (builders still connecting once the evaluation is done);
- ``graph``: to "graph" (reading the derivations); ``plan``: to "planned" (what exists, estimates);
- ``first set-up``: to the first build's "building" mark (a session with a slot, the upload);
- ``builds``: to the last build's end (per-build set-up and fetching included, told apart per
  build below); ``closing``: to "closed" (the executor's end, sessions closed);
- ``teardown``: to the process's exit (history, result links, interpreter exit).

Per build (median over the run's builds): ``set-up`` from its first mark to "building",
``building``, ``fetching`` from "fetching" to its end. ``interpreter`` is measured a second way
too: ``offload --version`` (imports and parser, nothing else) and a bare ``python -c pass``.

The section builds ``TRIVIAL`` trivial derivations remote-only and one generated graph with
``offload build --json``, ``reps`` times, fresh outputs each time, each case twice in a row: over
new ssh connections (the masters kept by earlier runs closed first, ``close_kept``), then over the
connections that run kept (``offload.transport.persist``), as a user's next run finds them.
"""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.helpers.fleets import stop_masters

from bench.context import log
from bench.graphs import generate
from bench.measure import json_events, per_build, run_timed
from bench.tools import offload_argv
from offload.dagfile import Dag, DagNode, to_nix_expression
from offload.transport.persist import location

if TYPE_CHECKING:
    from bench.context import Bench, Options, Save

__all__ = ["PHASES", "close_kept", "fixed_costs_section", "phases"]

# (phase, the mark that ends it); None: ended by the job events or the exit.
PHASES = (
    ("interpreter", "imported"),
    ("settings", "settings"),
    ("evaluation", "evaluated"),
    ("handshakes", "answered"),
    ("graph", "graph"),
    ("plan", "planned"),
    ("first set-up", None),
    ("builds", None),
    ("closing", "closed"),
    ("teardown", None),
)
TRIVIAL, QUICK_TRIVIAL = 100, 10
GRAPH, QUICK_GRAPH = ("layered", 40, 7), ("layered", 12, 7)


def phases(spawned: float, exited: float, events: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Seconds of each phase of ``PHASES`` (wall clock); {} without a ``timing`` event."""
    timing = next((e for e in events if e.get("event") == "timing"), None)
    if timing is None:
        return {}
    at = {str(name): float(t) for name, t in timing["marks"]}
    building = [
        float(e["time"])
        for e in events
        if e.get("event") == "job_phase" and e.get("phase") == "building" and not e.get("step")
    ]
    ends = [float(e["finished"]) for e in events if e.get("event") == "job_finished"]
    ends_at = {
        "first set-up": min(building, default=at.get("planned", spawned)),
        "builds": max(ends, default=min(building, default=at.get("planned", spawned))),
        "teardown": exited,
    }
    out: dict[str, float] = {}
    last = spawned
    for phase, name in PHASES:
        end = at.get(name, last) if name is not None else ends_at[phase]
        end = max(end, last)
        out[phase] = round(end - last, 4)
        last = end
    return out


def _offload(bench: Bench, argv: Sequence[str], dag: Dag, label: str, jobs: int) -> dict[str, Any]:
    nix_file = bench.work / f"fixed-{label}.nix"
    salt = f"{label}-{secrets.token_hex(4)}"
    nix_file.write_text(to_nix_expression(dag, salt=salt), encoding="utf-8")
    command = [*argv, "build", str(nix_file), "--builders", f"@{bench.fleet.machines_file}"]
    command += ["-j", str(jobs), "--no-out-link", "--json"]
    spawned = time.time()
    done = run_timed(command, env=bench.env, timeout=30 + 3.0 * len(dag.nodes))
    exited = spawned + done.elapsed
    events = json_events(done.stdout)
    ok = done.returncode == 0
    return {
        "status": "ok" if ok else ("timeout" if done.timed_out else "failed"),
        "wall_s": round(done.elapsed, 3),
        "phases": phases(spawned, exited, events) if ok else {},
        "per_build": per_build(events) if ok else {},
        "error": None if ok else done.tail(),
    }


def close_kept(env: Mapping[str, str]) -> None:
    """Stop the ssh masters offload keeps in the state directory ``env`` names, and wait until
    they are gone: the next run connects anew."""
    stop_masters(location(Path(env["OFFLOAD_STATE_DIR"])))


def _bare(argv: Sequence[str], env: Mapping[str, str]) -> float | None:
    done = run_timed(argv, env=env, timeout=60)
    return round(done.elapsed, 4) if done.returncode == 0 else None


def fixed_costs_section(bench: Bench, opts: Options, save: Save) -> dict[str, Any]:
    """``reps`` runs of each case."""
    argv, quick = offload_argv(), opts.quick
    reps = opts.reps
    trivial = QUICK_TRIVIAL if quick else TRIVIAL
    shape, nodes, seed = QUICK_GRAPH if quick else GRAPH
    cases = {
        f"{trivial} trivial (-j 0)": (
            Dag(tuple(DagNode(f"fixed-n{i:04d}", 0.0) for i in range(trivial))),
            0,
        ),
        f"{shape} {nodes} nodes, scale 1": (
            generate(shape, nodes, seed, prefix=f"fixed-{shape}{nodes}-s{seed}"),
            2,
        ),
    }
    section: dict[str, Any] = {"cases": {}, "version_s": [], "python_s": []}
    for rep in range(reps):
        section["version_s"].append(_bare([*argv, "--version"], bench.env))
        section["python_s"].append(_bare([sys.executable, "-c", "pass"], bench.env))
        for label, (dag, jobs) in cases.items():
            for connections in ("new", "kept"):
                if connections == "new":
                    close_kept(bench.env)
                case = f"{label}, {connections} connections"
                log(f"fixed costs: {case}, rep {rep + 1}")
                tag = f"r{rep}-{connections}-{len(dag.nodes)}"
                record = _offload(bench, argv, dag, tag, jobs)
                section["cases"].setdefault(case, []).append(record)
                log(f"  -> {record['status']} in {record['wall_s']:.1f} s")
                save("fixed_costs", section)
    return section
