"""`make bench`: offload against Nix's own build hook and against the lower bound, in one run.

Sections (``--only`` picks some):

- ``graphs``: generated build graphs (layered, chain, wide, huge) built as real derivations by
  stock ``nix-build --builders``, by ``offload build`` and by the same ``nix-build`` with
  ``--option build-hook offload-hook``, alternating, fresh outputs each time;
- ``overhead``: 100 trivial derivations remote-only (``-j 0``) by the same three, plus a
  local-only floor;
- ``copy``: a ~200 MB closure to one member, ``nix-copy-closure`` vs offload's serve-protocol copy,
  with and without ssh compression;
- ``clients``: two and three clients at once, offload and Nix's hook (``bench/clients.py``);
- ``planning``: the scheduler's own cost on 1,000-50,000 simulated nodes, no building.

Everything runs on a fleet this script brings up under /tmp and always stops (try/finally, also
on Ctrl-C); offload gets a fresh state directory there too, so its history starts empty. Raw
measurements go to ``bench/results/<date>.json`` (written after every section, so an
interrupted run keeps what it measured) and ``bench/report.py`` turns them into
docs/BENCHMARKS.md. A failing or timed-out command is a measurement, recorded as such.

``--quick`` (one small graph, one repetition, small overhead and copy sizes) and ``--only`` runs
write to ``$TMPDIR/offload-bench-DATE-quick.json`` (or ``-partial``) instead and leave the doc
alone unless ``--report`` is given; ``--out`` overrides the path. An unfinished run (Ctrl-C, an
error) leaves its measurements in ``<out>.partial``, never over a complete results file.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import secrets
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in {None, ""}:
    # `python bench/run.py` puts bench/ first on sys.path; the repository root is what we need.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.clients import clients_section
from bench.graphs import generate
from bench.measure import (
    BuildAccount,
    StoreSnapshot,
    Timed,
    list_store,
    parse_nix_builds,
    parse_offload_events,
    parse_ssh_transferred,
    received_bytes,
    run_timed,
    store_name,
)
from bench.report import write_report
from bench.report_model import simulate_section
from offload.dagfile import Dag, DagNode, to_nix_expression
from offload.errors import OffloadError
from offload.fleet import Fleet, MemberSpec, fleet_down, fleet_up
from offload.hook.coordinator import stop_coordinators
from offload.process import run
from offload.scheduler.dag import Job
from offload.scheduler.policy import MachineSlotSpec
from offload.scheduler.simulate import simulate

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ("graphs", "overhead", "copy", "clients", "planning", "simulate")
FLEET_SPECS = ("fast:4:2", "medium:2:2", "slow:1:2")
LOCAL_SPEED, LOCAL_SLOTS = 1.0, 2
# Sizes chosen so the whole run stays well inside 30 minutes on a 2-core machine: Nix's hook
# spends about 1.5 s of each remote build on ssh and copying whatever the work, so it needs ~0.8 s
# per node here. Work is scaled by 4 (DEFAULT_SCALE): a typical node then takes 0.2-1 s on the
# fastest member and the lower bounds are 14-19 s, so the targets measure scheduling rather than
# the ~0.8 s of evaluation and ssh set-up every run pays once (reported apart: wall vs span). Real
# derivations take seconds to minutes; at scale 2 that fixed cost alone was 10% of a bound.
GRAPHS = (("layered", 60, 1), ("chain", 40, 2), ("wide", 60, 3), ("huge", 50, 4))
DEFAULT_SCALE = 4.0
QUICK_GRAPHS = (("layered", 40, 1),)
PLAN_SIZES = (1_000, 10_000, 50_000)
QUICK_PLAN_SIZES = (1_000,)
HOST_STORE = Path(os.environ.get("NIX_STORE_DIR", "/nix/store"))
NO_SUBSTITUTES = ["--option", "substituters", "", "--option", "builders-use-substitutes", "false"]


# Records a section's (partial) results and writes the results file.
Save = Callable[[str, object], None]


@dataclass(frozen=True)
class Options:
    sections: tuple[str, ...]
    reps: int
    scale: float
    quick: bool
    out: Path
    doc: Path | None
    trivial: int
    copy_mb: int


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- machine info --------------------------------------------------------------------------------


def _first_line(argv: Sequence[str]) -> str:
    # No optional locks: `git status` must not rewrite the index of a tree others work in.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        done = run(argv, check=False, timeout=30, env=env)
    except OffloadError as exc:
        return f"unavailable ({exc.message})"
    return (done.stdout.strip().splitlines() or ["?"])[0]


def machine_info() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = round(int(line.split()[1]) / (1 << 20), 1)
    except OSError:
        pass
    os_name = "?"
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    git = ["git", "-C", str(REPO)]
    dirty = _first_line([*git, "status", "--porcelain", "--untracked-files=no"])
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory,
        "kernel": platform.release(),
        "os": os_name,
        "nix_version": _first_line(["nix-build", "--version"]).rsplit(" ", 1)[-1],
        "python_version": platform.python_version(),
        "git_commit": _first_line([*git, "rev-parse", "HEAD"]),
        "git_dirty": dirty not in {"", "?"},
        "loadavg_start": " ".join(f"{v:.2f}" for v in os.getloadavg()),
    }


# --- building ------------------------------------------------------------------------------------


def hook_path() -> str:
    """``offload-hook`` of this installation, for ``--option build-hook``."""
    return str(Path(sys.executable).with_name("offload-hook"))


def offload_argv() -> list[str]:
    exe = Path(sys.executable).with_name("offload")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "offload"]


@dataclass(frozen=True)
class Bench:
    """What every build needs: the fleet, the environment, and where temporary files go."""

    fleet: Fleet
    work: Path
    env: Mapping[str, str]

    @property
    def stores(self) -> dict[str, Path]:
        return {m.name: m.root / "nix" / "store" for m in self.fleet.members}

    def speeds_and_slots(self) -> list[tuple[float, int]]:
        return [(m.spec.speed, m.spec.jobs) for m in self.fleet.members] + [
            (LOCAL_SPEED, LOCAL_SLOTS)
        ]


def planned_makespan(dag: Dag, speeds_and_slots: Sequence[tuple[float, int]]) -> float:
    """The simulator's makespan for ``dag`` under offload's policy, durations known exactly."""
    machines = [
        MachineSlotSpec(f"m{i}", speed, slots) for i, (speed, slots) in enumerate(speeds_and_slots)
    ]
    jobs = [Job(node.name, node.work, tuple(node.deps)) for node in dag.nodes]
    return simulate(jobs, machines).makespan


def make_env(fleet: Fleet, work: Path) -> dict[str, str]:
    env = fleet.env()
    # No network here: never let either tool wait on a binary cache.
    env["NIX_CONFIG"] = "substituters =\nbuilders-use-substitutes = false\n"
    env["OFFLOAD_STATE_DIR"] = str(work / "offload-state")
    return env


def build_once(
    bench: Bench,
    dag: Dag,
    *,
    tool: str,
    rep: int,
    label: str,
    jobs: int,
    timeout: float,
    builders: bool = True,
) -> dict[str, Any]:
    """Build ``dag`` once with ``tool``; one raw result record. Tools: "nix" (nix-build with Nix's
    own hook), "hook" (nix-build with ``offload-hook``), "offload" (``offload build``)."""
    salt = f"{label}-r{rep}-{tool}-{secrets.token_hex(4)}"
    nix_file = bench.work / f"{label}-r{rep}-{tool}.nix"
    nix_file.write_text(to_nix_expression(dag, salt=salt), encoding="utf-8")
    machines = f"@{bench.fleet.machines_file}" if builders else ""
    if tool == "offload":
        argv = [*offload_argv(), "build", str(nix_file), "--builders", machines]
        argv += ["-j", str(jobs), "--no-out-link", "--json"]
    else:
        argv = ["nix-build", str(nix_file), "--builders", machines, "-j", str(jobs)]
        argv += ["--no-out-link", *NO_SUBSTITUTES]
        if tool == "hook":
            argv += ["--option", "build-hook", hook_path()]
    names = {node.name for node in dag.nodes}
    before = StoreSnapshot.take(bench.stores)
    host_before = list_store(HOST_STORE, names)
    load = os.getloadavg()[0]
    done = run_timed(argv, env=bench.env, timeout=timeout)
    host_after = list_store(HOST_STORE, names)
    account = (
        parse_offload_events(done.stdout)
        if tool == "offload"
        else parse_nix_builds(done.stderr, done.stdout)
    )
    sent, remote_outputs = before.growth(StoreSnapshot.take(bench.stores), account)
    # Salted outputs are new, so every node's output must have appeared in this machine's store.
    present = len({store_name(e) for e in host_after - host_before if not e.endswith(".drv")})
    status, error = _status(done, account, len(dag.nodes), present)
    record: dict[str, Any] = {
        "tool": tool,
        "rep": rep,
        "salt": salt,
        "argv": shlex.join(argv),
        "status": status,
        "exit_code": done.returncode,
        "wall_s": round(done.elapsed, 3),
        "loadavg_1m_before": round(load, 2),
        "builds": account.per_machine(),
        "built": len(account.built),
        "outputs": len(account.outputs),
        "outputs_present": present,
        # Outside measures, the same for both tools (file bytes, not NAR or wire bytes).
        "store_sent": sent,
        "store_remote_outputs": remote_outputs,
        "store_received": received_bytes(HOST_STORE, host_before, host_after, account),
        # What the tool itself reported (offload's events; stock Nix reports nothing).
        "bytes_sent": account.bytes_sent,
        "bytes_received": account.bytes_received,
        "run_s": None if account.run_s is None else round(account.run_s, 3),
        "error": error,
    }
    if account.bad_lines:
        record["non_json_lines"] = account.bad_lines
    nix_file.unlink(missing_ok=True)
    return record


def _status(done: Timed, account: BuildAccount, nodes: int, present: int) -> tuple[str, str | None]:
    if done.timed_out:
        return "timeout", f"stopped after {done.elapsed:.0f} s"
    if done.returncode != 0:
        return "failed", f"exit {done.returncode}: {done.tail()}"
    # Both tools print every output; a short list means something else was built (nix-build
    # silently skips top-level attributes whose names are not identifiers, for one).
    if len(account.outputs) != nodes:
        return "failed", f"exit 0 but {len(account.outputs)} outputs printed for {nodes} nodes"
    if present != nodes:
        return "failed", f"exit 0 but only {present} of {nodes} outputs are in the local store"
    return "ok", None


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
            for tool in ("nix", "offload", "hook"):
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
    plan = [(rep, tool) for rep in range(opts.reps) for tool in ("nix", "offload", "hook")]
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


# --- copying a closure ---------------------------------------------------------------------------


def _blob(path: Path, size: int, *, compressible: bool) -> None:
    """Random bytes, or text that compresses like a build log (about 3-4x)."""
    with path.open("wb") as out:
        written = 0
        counter = 0
        while written < size:
            if compressible:
                words = secrets.token_hex(8)
                chunk = "".join(
                    f"[{counter + i:08d}] building module {words[i % 16]}{i % 97} ok {words}\n"
                    for i in range(2048)
                ).encode()
                counter += 2048
            else:
                chunk = os.urandom(1 << 20)
            chunk = chunk[: size - written]
            out.write(chunk)
            written += len(chunk)


async def _offload_copy(
    member: str, paths: Sequence[str], env: Mapping[str, str], compress: bool
) -> tuple[float, int]:
    from offload.scheduler.run import send_closure
    from offload.transport.sessions import open_local_store, open_ssh_store
    from offload.transport.ssh import SshTarget

    began = time.monotonic()
    async with (
        open_local_store() as src,
        open_ssh_store(SshTarget(member, compress=compress), name=member, env=env) as dst,
    ):
        moved = await send_closure(src, dst, paths)
    return time.monotonic() - began, moved


def copy_section(bench: Bench, opts: Options, save: Save) -> dict[str, Any]:
    member = bench.fleet.members[0].name
    data = bench.work / "closure"
    data.mkdir()
    total = opts.copy_mb * (1 << 20)
    files = []
    for i in range(4):
        path = data / f"offload-bench-blob-{i}-{secrets.token_hex(4)}"
        _blob(path, total // 4, compressible=i % 2 == 1)
        files.append(path)
    added = run(["nix-store", "--add", *map(str, files)], timeout=600).stdout.split()
    shutil.rmtree(data)
    section: dict[str, Any] = {
        "member": member,
        "paths": len(added),
        "bytes": total,
        "offload_copy": "offload.scheduler.run.send_closure over open_local_store/open_ssh_store "
        "(what a build does to send its inputs: validity and closure queries, one export stream)",
        "runs": [],
    }
    wrapper = _ssh_wrapper(bench.work)
    try:
        for rep in range(opts.reps):
            for compress in (False, True):
                for tool in ("nix", "offload"):
                    # The member must lack the paths each time; nothing roots them there.
                    run(
                        bench.fleet.ssh_argv(member, "nix-store", "--delete", *added),
                        check=False,
                        timeout=120,
                    )
                    env = dict(bench.env)
                    env["NIX_SSHOPTS"] = bench.fleet.sshopts + (" -C" if compress else "")
                    env["PATH"] = f"{wrapper.parent}:{env.get('PATH', '/usr/bin:/bin')}"
                    env["OFFLOAD_BENCH_SSH_LOG"] = str(wrapper.parent / "log")
                    log(f"copy {total >> 20} MiB: {tool} compress={compress} rep {rep + 1}")
                    record = _copy_once(
                        bench.fleet, member, paths=added, env=env, tool=tool, compress=compress
                    )
                    record["rep"] = rep
                    section["runs"].append(record)
                    log(f"  -> {record['status']} in {record['wall_s']:.1f} s")
                    save("copy", section)
    finally:
        # Ours, unrooted, and 200 MB: remove them from this machine's store again.
        run(["nix-store", "--delete", *added], check=False, timeout=300)
    return section


def _ssh_wrapper(work: Path) -> Path:
    """An ``ssh`` first on PATH that logs ssh's ``Transferred:`` line to a file per connection.

    Nix stops its ssh with SIGKILL, before ssh prints what it transferred. The wrapper does not
    exec: when Nix kills it, the real ssh lives on until its stdin closes, then logs its totals.
    Both tools go through the same wrapper (one extra shell per connection).
    """
    real = shutil.which("ssh") or "/usr/bin/ssh"
    wrapper = work / "sshwrap" / "ssh"
    wrapper.parent.mkdir()
    wrapper.write_text(
        f'#!/bin/sh\n{shlex.quote(real)} -E "$OFFLOAD_BENCH_SSH_LOG.$$" -o LogLevel=VERBOSE "$@"\n',
        encoding="utf-8",
    )
    wrapper.chmod(0o755)
    return wrapper


def _wire_bytes(log_prefix: Path, timeout: float = 10.0) -> tuple[int, int] | None:
    """Sum the ssh logs of one copy once every ssh has written its totals; remove them."""
    deadline = time.monotonic() + timeout
    logs: list[Path] = []
    while True:
        logs = sorted(log_prefix.parent.glob(log_prefix.name + ".*"))
        texts = [p.read_text(errors="replace") for p in logs]
        # Only sessions that connected print totals (some ssh calls log nothing at all).
        connected = [t for t in texts if "Authenticated to" in t]
        if all("Transferred:" in t for t in connected) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    wire = parse_ssh_transferred(line for t in texts for line in t.splitlines())
    for path in logs:
        path.unlink(missing_ok=True)
    return (wire.sent, wire.received) if wire else None


def _copy_once(
    fleet: Fleet,
    member: str,
    *,
    paths: Sequence[str],
    env: Mapping[str, str],
    tool: str,
    compress: bool,
) -> dict[str, Any]:
    record: dict[str, Any] = {"tool": tool, "compress": compress}
    if tool == "nix":
        done = run_timed(["nix-copy-closure", "--to", member, *paths], env=env, timeout=600)
        ok = done.returncode == 0
        record.update(
            status="ok" if ok else ("timeout" if done.timed_out else "failed"),
            wall_s=round(done.elapsed, 3),
            error=None if ok else done.tail(),
        )
    else:
        try:
            elapsed, _ = asyncio.run(_offload_copy(member, paths, env, compress))
        except (OffloadError, OSError) as exc:
            record.update(status="failed", wall_s=0.0, error=str(exc))
        else:
            record.update(status="ok", wall_s=round(elapsed, 3), error=None)
    if record["status"] == "ok" and not all(fleet.store_has(member, p) for p in paths):
        record.update(status="failed", error="paths not valid on the member afterwards")
    wire = _wire_bytes(Path(env["OFFLOAD_BENCH_SSH_LOG"]))
    record["wire_sent"] = wire[0] if wire else None
    record["wire_received"] = wire[1] if wire else None
    return record


# --- planning ------------------------------------------------------------------------------------


def planning_section(opts: Options, save: Save) -> dict[str, Any]:
    section: dict[str, Any] = {
        "machines": 100,
        "function": "offload.scheduler.simulate.plan_cost",
        "runs": [],
    }
    sizes = QUICK_PLAN_SIZES if opts.quick else PLAN_SIZES
    for nodes in sizes:
        log(f"planning {nodes} nodes on 100 simulated machines")
        try:
            from offload.scheduler.simulate import plan_cost

            cost = plan_cost(nodes, 100, seed=0)
        except (ImportError, OffloadError, ValueError) as exc:
            section["runs"].append({"nodes": nodes, "status": "failed", "error": str(exc)})
        else:
            section["runs"].append(
                {
                    "nodes": nodes,
                    "status": "ok",
                    "seconds": round(cost.seconds, 4),
                    "peak_bytes": cost.peak_bytes,
                }
            )
            log(f"  -> {cost.seconds:.2f} s, {cost.peak_bytes / (1 << 20):.1f} MiB")
        save("planning", section)
    return section


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(description="Benchmark offload against Nix's build hook.")
    parser.add_argument("--quick", action="store_true", help="one small graph, one repetition")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="SECTION",
        help=f"run only these sections ({', '.join(SECTIONS)}; repeatable or comma-separated)",
    )
    parser.add_argument("--reps", type=int, help="repetitions per tool (default 3, quick 1)")
    parser.add_argument(
        "--scale",
        type=float,
        default=DEFAULT_SCALE,
        help=f"multiply every node's work (default {DEFAULT_SCALE:g})",
    )
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results/DATE.json)")
    parser.add_argument(
        "--report",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="regenerate docs/BENCHMARKS.md (default: only for a full run)",
    )
    args = parser.parse_args(argv)
    sections = tuple(s for item in args.only for s in item.split(",") if s) or SECTIONS
    for section in sections:
        if section not in SECTIONS:
            parser.error(f"unknown section {section!r}; choose from {', '.join(SECTIONS)}")
    reps = args.reps if args.reps is not None else (1 if args.quick else 3)
    if reps < 1:
        parser.error("--reps must be at least 1")
    if not args.scale > 0:
        parser.error("--scale must be positive")
    full = not args.quick and not args.only
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    suffix = "" if full else ("-quick" if args.quick else "-partial")
    # Only full runs belong in bench/results (they are committed); others go to the temp dir.
    results_dir = REPO / "bench" / "results" if full else Path(tempfile.gettempdir())
    out = args.out or results_dir / f"{'' if full else 'offload-bench-'}{date}{suffix}.json"
    report = args.report if args.report is not None else full
    return Options(
        sections=sections,
        reps=reps,
        scale=args.scale,
        quick=args.quick,
        out=out,
        doc=REPO / "docs" / "BENCHMARKS.md" if report else None,
        trivial=20 if args.quick else 100,
        copy_mb=20 if args.quick else 200,
    )


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    if os.geteuid() != 0:
        print("bench: run as root (the local fleet needs mount namespaces)", file=sys.stderr)
        return 2
    began = time.monotonic()
    results: dict[str, Any] = {
        "version": 1,
        "command": "make bench"
        if argv is None and len(sys.argv) == 1
        else shlex.join(["python", "bench/run.py", *(sys.argv[1:] if argv is None else argv)]),
        "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "options": {
            "sections": list(opts.sections),
            "reps": opts.reps,
            "scale": opts.scale,
            "quick": opts.quick,
        },
        "machine": machine_info(),
        "fleet": {
            "members": [
                {"name": s.name, "speed": s.speed, "slots": s.jobs}
                for s in map(MemberSpec.parse, FLEET_SPECS)
            ],
            "local": {"speed": LOCAL_SPEED, "slots": LOCAL_SLOTS},
        },
        "notes": [],
        "complete": False,
    }
    opts.out.parent.mkdir(parents=True, exist_ok=True)

    # Until the run completes, results go to DATE.json.partial: an interrupted run must not
    # replace a complete results file of the same day.
    partial = opts.out.with_name(opts.out.name + ".partial")

    def save(section: str | None = None, value: object = None) -> None:
        if section is not None:
            results[section] = value
        results["duration_s"] = round(time.monotonic() - began, 1)
        tmp = opts.out.with_name(opts.out.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        tmp.replace(opts.out if results["complete"] else partial)
        if results["complete"]:
            partial.unlink(missing_ok=True)

    needs_fleet = any(s in opts.sections for s in ("graphs", "overhead", "copy", "clients"))
    # Short: sshd and ssh limit unix socket path lengths.
    work = Path(tempfile.mkdtemp(prefix="ob", dir="/tmp"))
    fleet_dir = work / "f"
    try:
        if needs_fleet:
            log(f"starting the fleet in {fleet_dir}")
            fleet = fleet_up(fleet_dir, [MemberSpec.parse(s) for s in FLEET_SPECS])
            bench = Bench(fleet, work, make_env(fleet, work))
            if "graphs" in opts.sections:
                results["graphs"] = graph_section(bench, opts, save)
            if "overhead" in opts.sections:
                results["overhead"] = overhead_section(bench, opts, save)
            if "copy" in opts.sections:
                results["copy"] = copy_section(bench, opts, save)
            if "clients" in opts.sections:
                results["clients"] = clients_section(
                    fleet, work, bench.env, reps=opts.reps, quick=opts.quick, save=save
                )
        if "planning" in opts.sections:
            results["planning"] = planning_section(opts, save)
        if "simulate" in opts.sections:
            log("simulating 50,000 nodes on 200 machines under both policies")
            results["simulate"] = simulate_section(1_000 if opts.quick else 50_000)
            save("simulate", results["simulate"])
        results["complete"] = True
    except KeyboardInterrupt:
        results["notes"].append("interrupted (Ctrl-C): the results are partial")
        raise
    finally:
        try:
            if needs_fleet:
                log("stopping offload-hook's coordinator and the fleet")
                stop_coordinators(work / "offload-state")
                fleet_down(fleet_dir, purge=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            save()
            where = opts.out if results["complete"] else partial
            log(f"results in {where} after {results['duration_s'] / 60:.1f} min")
    if opts.doc is not None:
        for path in write_report(opts.out, opts.doc):
            log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench: interrupted; the fleet is stopped, partial results kept", file=sys.stderr)
        sys.exit(130)
