"""`make bench`'s ``clients`` section: two and three clients building at once on the fleet, with
``offload build`` and with Nix's own hook, and how many builds each member ran at once.

A client is a host of its own as far as slots go: it runs in a mount namespace where its own
``current-load`` directory is mounted over Nix's (``offload.fleet.client_argv``), with its own
offload state directory, so no tool sees another client's host-side slot locks (the clients
share this host's store, which only makes their outputs easy to check). Each client builds its
own graph (a layered graph, seed = the client's number, its own salt: nothing is shared),
remote-only (``-j 0``) so every build lands on a member. Nix's hook: ``nix-build --builders
@machines -j 0``; offload: ``offload build --builders @machines -j 0 --json``.

The clients start together: each one, once spawned, writes a ready file and waits for a shared
``flock`` on a barrier file that this process holds exclusively until every client is ready; a
client's wall time runs from that release to its exit.

Every build stamps its start and end from inside its member (``bench.stamps``), so the most
builds running at once on a member is the member's own record; a build stopped before its end
counts as running until its process exited.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.context import Save, log
from bench.graphs import generate
from bench.measure import BuildAccount, parse_nix_builds, parse_offload_events
from bench.stamps import MEMBER_FILE, MemberPeak, Watch, peaks, stamp_shell
from bench.tools import NO_SUBSTITUTES, offload_argv
from offload.dagfile import Dag, to_nix_expression
from offload.fleet import Fleet, client_argv
from offload.process import spawn
from offload.slots import NIX_CURRENT_LOAD

__all__ = [
    "CLIENT_COUNTS",
    "MEMBER_FILE",
    "MemberPeak",
    "client_graph",
    "clients_section",
    "peaks",
    "stamp_shell",
]

CLIENT_COUNTS = (2, 3)
TOOLS = ("nix", "offload")
# Sized so the section (2 and 3 clients, both tools, 3 repetitions) stays under ~4 minutes on a
# 2-core machine. A client's graph is about 43 s of work at speed 1 in builds of 1-8 s: Nix's hook
# decides one build at a time, each decision with its ssh connection (~0.5 s), so with builds much
# shorter than that a client rarely has two running at once and nothing shows; with these its
# wide layer (6-10 builds) fills the members it picks, and so would each client alone.
NODES, QUICK_NODES = 12, 6
SCALE, QUICK_SCALE = 3.0, 2.0
TIMEOUT = 180.0
READY_TIMEOUT = 30.0


# --- pure parts ----------------------------------------------------------------------------------


def client_graph(client: int, nodes: int, scale: float) -> Dag:
    """Client ``client``'s own graph (0-based): a layered graph with its own seed and names."""
    return generate(
        "layered", nodes, client + 1, scale=scale, prefix=f"client{client}-layered{nodes}"
    )


# --- one run: N clients at once ------------------------------------------------------------------


@dataclass(frozen=True)
class _Client:
    argv: list[str]
    env: dict[str, str]
    ready: Path
    nodes: int


@dataclass(frozen=True)
class _Ended:
    returncode: int | None  # None: stopped at the timeout
    wall_s: float
    stdout: str
    stderr: str


async def _run_together(clients: Sequence[_Client], barrier: Path) -> list[_Ended]:
    """Spawn every client, release them together once all are ready, wait for each."""
    fd = os.open(barrier, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    ends: list[float | None] = [None] * len(clients)
    try:
        async with contextlib.AsyncExitStack() as stack:
            procs = [
                await stack.enter_async_context(spawn(c.argv, env=c.env, stdin=False))
                for c in clients
            ]

            async def communicate(i: int) -> tuple[bytes, bytes]:
                out = await procs[i].communicate()
                ends[i] = time.monotonic()
                return out

            tasks = [asyncio.create_task(communicate(i)) for i in range(len(procs))]
            deadline = time.monotonic() + READY_TIMEOUT
            # A client that ended before it got ready is released with the others (it failed).
            while not all(
                c.ready.exists() or t.done() for c, t in zip(clients, tasks, strict=True)
            ):
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.01)
            fcntl.flock(fd, fcntl.LOCK_UN)
            began = time.monotonic()
            await asyncio.wait(tasks, timeout=TIMEOUT)
            ended = []
            for i, task in enumerate(tasks):
                if not task.done():
                    task.cancel()  # spawn's exit stops the client's process group
                    ended.append(_Ended(None, time.monotonic() - began, "", ""))
                    continue
                out, err = task.result()
                wall = max((ends[i] or began) - began, 0.0)
                text = out.decode(errors="replace"), err.decode(errors="replace")
                ended.append(_Ended(procs[i].returncode, wall, *text))
            return ended
    finally:
        os.close(fd)


def _client_argv(tool: str, file: Path, fleet: Fleet) -> list[str]:
    machines = f"@{fleet.machines_file}"
    if tool == "offload":
        offload = [*offload_argv(), "build"]
        return [*offload, str(file), "--builders", machines, "-j", "0", "--no-out-link", "--json"]
    nix = ["nix-build", str(file), "--builders", machines, "-j", "0", "--no-out-link"]
    return [*nix, *NO_SUBSTITUTES]


def _at_barrier(ready: Path, barrier: Path, argv: Sequence[str]) -> list[str]:
    """``argv`` once it said it is ready and the barrier's exclusive lock is released."""
    script = 'echo > "$1" && flock -s "$2" /bin/true && shift 2 && exec "$@"'
    return ["/bin/sh", "-c", script, "sh", str(ready), str(barrier), *argv]


def _client_record(index: int, tool: str, ended: _Ended, nodes: int) -> dict[str, Any]:
    account: BuildAccount = (
        parse_offload_events(ended.stdout)
        if tool == "offload"
        else parse_nix_builds(ended.stderr, ended.stdout)
    )
    present = sum(1 for path in account.outputs if Path(path).exists())
    if ended.returncode is None:
        status, error = "timeout", f"stopped after {ended.wall_s:.0f} s"
    elif ended.returncode != 0:
        tail = "\n".join((ended.stderr.strip() or ended.stdout.strip()).splitlines()[-8:])
        status, error = "failed", f"exit {ended.returncode}: {tail}"
    elif len(account.outputs) != nodes or present != nodes:
        status = "failed"
        error = f"exit 0 but {present} of {nodes} outputs are in the local store"
    else:
        status, error = "ok", None
    return {
        "client": index,
        "status": status,
        "exit_code": ended.returncode,
        "wall_s": round(ended.wall_s, 3),
        "builds": account.per_machine(),
        "error": error,
    }


@dataclass(frozen=True)
class _Setup:
    fleet: Fleet
    dir: Path  # this section's own directory under the bench's work directory
    env: Mapping[str, str]
    nodes: int
    scale: float


def run_once(setup: _Setup, count: int, tool: str, rep: int) -> dict[str, Any]:
    """``count`` clients with ``tool`` at once; one raw result record."""
    run_dir = setup.dir / f"{tool}-{count}-r{rep}-{secrets.token_hex(3)}"
    run_dir.mkdir()
    stamps, barrier = run_dir / "stamps", run_dir / "barrier"
    clients = []
    for i in range(count):
        home = setup.dir / f"client{i}"
        (home / "current-load").mkdir(parents=True, exist_ok=True)
        file = run_dir / f"client{i}.nix"
        salt = f"clients-{run_dir.name}-c{i}"
        dag = client_graph(i, setup.nodes, setup.scale)
        expr = to_nix_expression(dag, salt=salt, wrap=stamp_shell(stamps))
        file.write_text(expr, encoding="utf-8")
        env = dict(setup.env)
        env["OFFLOAD_STATE_DIR"] = str(home / "state")  # the client's own, kept across runs
        ready = run_dir / f"ready{i}"
        argv = client_argv(
            home / "current-load",
            _at_barrier(ready, barrier, _client_argv(tool, file, setup.fleet)),
        )
        clients.append(_Client(argv, env, ready, len(dag.nodes)))
    load = os.getloadavg()[0]
    with Watch(stamps) as watch:
        ended = asyncio.run(_run_together(clients, barrier))
    per_client = [
        _client_record(i, tool, e, c.nodes)
        for i, (c, e) in enumerate(zip(clients, ended, strict=True))
    ]
    text = stamps.read_text(encoding="utf-8") if stamps.exists() else ""
    member_peaks, bad = peaks(text.splitlines(), watch.gone)
    ok = all(c["status"] == "ok" for c in per_client)
    return {
        "clients": count,
        "tool": tool,
        "rep": rep,
        "status": "ok" if ok else "failed",
        "wall_s": max(c["wall_s"] for c in per_client),
        "loadavg_1m_before": round(load, 2),
        "per_client": per_client,
        "peak": {who: p.peak for who, p in member_peaks.items()},
        "started": {who: p.builds for who, p in member_peaks.items()},
        "unfinished": {who: p.unfinished for who, p in member_peaks.items() if p.unfinished},
        "stopped": {who: p.stopped for who, p in member_peaks.items() if p.stopped},
        # Of those, the ones gone before their start was read: their end is when that was seen.
        "stopped_late": len(watch.late),
        "bad_stamps": bad,
    }


def clients_section(
    fleet: Fleet, work: Path, env: Mapping[str, str], *, reps: int, quick: bool, save: Save
) -> dict[str, Any]:
    """The section's results: every run of 2 and 3 clients with both tools, ``reps`` times."""
    setup = _Setup(
        fleet,
        work / "clients",
        env,
        QUICK_NODES if quick else NODES,
        QUICK_SCALE if quick else SCALE,
    )
    setup.dir.mkdir()
    NIX_CURRENT_LOAD.mkdir(exist_ok=True)  # the clients' mount point
    names = [fleet.dir / m.name / "etc-nix" / MEMBER_FILE for m in fleet.members]
    for member, path in zip(fleet.members, names, strict=True):
        path.write_text(member.name + "\n", encoding="utf-8")
    section: dict[str, Any] = {
        "graph": f"layered, {setup.nodes} nodes, seed = client number, scale {setup.scale:g}",
        "nodes": setup.nodes,
        "scale": setup.scale,
        "slots": {m.name: m.spec.jobs for m in fleet.members},
        "runs": [],
    }
    try:
        for rep in range(reps):
            for count in CLIENT_COUNTS:
                for tool in TOOLS:
                    log(f"clients: {count} at once, {tool} rep {rep + 1}")
                    record = run_once(setup, count, tool, rep)
                    section["runs"].append(record)
                    walls = ", ".join(f"{c['wall_s']:.1f}" for c in record["per_client"])
                    log(f"  -> {record['status']}, walls {walls} s, peaks {record['peak']}")
                    save("clients", section)
    finally:
        for path in names:
            path.unlink(missing_ok=True)
    return section
