"""The faults, each one run of ``offload build`` on the suite's fleet with the fault put in at a
random moment, and what came of it (``Trial``).

A run ends *correct* when it exits 0 with the requested output valid here and byte for byte
what the graph makes; with a *clear error* when it exits non-zero with an ``error:`` line and no
traceback (the only fitting end for SIGINT and SIGTERM). Faults that cannot stop a run (a wrong
key, a changed host key, a restricted builder) must end correct *and* say what happened.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.fleets import drop_member, member_processes

from bench.faults.harness import (
    Graph,
    Leftovers,
    Offload,
    audit,
    empty_store,
    fill_store,
    freeze,
    offload_argv,
    offload_env,
    signal_all,
    wait_until,
)
from offload.fleet import Fleet, MemberSpec, fleet_up
from offload.transport.persist import location
from offload.transport.ssh import ssh_path

SPECS = (
    MemberSpec("fzfast", 4.0, 2),
    MemberSpec("fzmed", 2.0, 2),
    MemberSpec("fzslow", 1.0, 2),
    MemberSpec.parse("fzhard:1:1:serve"),
    MemberSpec.parse("fzbare:1:1:untrusted"),
)
# The members only their own faults use: the rest never see them.
SPECIAL = "fzhard,fzbare"
# A run that takes longer than this is killed and counted as neither correct nor clear.
RUN_TIMEOUT = 120.0
HOOK = str(Path(sys.executable).parent / "offload-hook")


@dataclass
class Trial:
    fault: str
    correct: bool = False
    clear_error: bool = False
    said: bool = True  # the fault was reported where the user looks (stderr, --json)
    notice: float | None = None  # seconds from the fault to offload saying the machine is down
    elapsed: float = 0.0
    left: Leftovers = field(default_factory=Leftovers)
    note: str = ""

    @property
    def ok(self) -> bool:
        return (self.correct or self.clear_error) and self.said


@dataclass
class Suite:
    fleet: Fleet
    root: Path  # the fleet's directory
    work: Path
    rng: random.Random

    def machines(self, *, edit: Callable[[list[str]], None] | None = None, drop: str = "") -> Path:
        """The fleet's machines file, with ``edit`` applied to each line's columns, without
        member ``drop``'s line."""
        lines = []
        dropped = self.fleet.member(drop).uri if drop else None
        for line in self.fleet.machines_file.read_text().splitlines():
            columns = line.split()
            if columns[0] == dropped:
                continue
            if edit is not None:
                edit(columns)
            lines.append(" ".join(columns))
        path = self.work / f"machines-{self.rng.getrandbits(32):08x}"
        path.write_text("\n".join(lines) + "\n")
        return path

    def heal(self) -> None:
        """Start members a fault killed (fleet_up keeps the running ones)."""
        self.fleet = fleet_up(self.root, SPECS)


def _judge(trial: Trial, run: Offload, code: int | None, graph: Graph) -> None:
    outputs = [e["outputs"] for e in run.events if e["event"] == "run_finished"]
    if code == 0 and outputs and outputs[-1]:
        try:
            trial.correct = Path(outputs[-1][0]).read_bytes() == graph.expected
        except OSError:
            trial.correct = False
    lines = run.stderr.splitlines()
    trial.clear_error = (
        code not in {0, None}
        and any(line.startswith("error: ") for line in lines)
        and "Traceback" not in run.stderr
    )
    if not (trial.correct or trial.clear_error):
        trial.note = f"exit {code}: {run.stderr.strip()[-300:]}"


def _start(suite: Suite, graph: Graph, machines: Path, *args: str, sshopts: str = "") -> Offload:
    argv = offload_argv(graph.file, "--builders", f"@{machines}", "-j", "0", *args)
    env = offload_env(suite.fleet, suite.work)
    env["NIX_SSHOPTS"] = sshopts or env["NIX_SSHOPTS"]
    return Offload(argv, env, suite.work)


def _ssh_config_with_key(suite: Suite, victim: str, key: Path) -> str:
    """NIX_SSHOPTS for a copy of the fleet's ssh_config where ``victim`` offers only ``key``."""
    blocks = suite.fleet.ssh_config.read_text().split("\n\n")
    for i, block in enumerate(blocks):
        if block.startswith(f"Host {victim}\n"):
            lines = [line for line in block.splitlines() if "IdentityFile" not in line]
            blocks[i] = "\n".join([*lines, f"  IdentityFile {key}"])
    config = suite.work / "ssh_config"
    config.write_text("\n\n".join(blocks))
    return f"-F {config}"


def _busy_member(suite: Suite, run: Offload, delay: float) -> str | None:
    """Wait ``delay`` seconds after a build starts on a member, and name a member building."""
    if not wait_until(lambda: bool(run.building_on()) or run.proc.poll() is not None, 60):
        return None
    time.sleep(delay)
    busy = sorted(run.building_on() & {m.name for m in suite.fleet.members})
    return suite.rng.choice(busy) if busy else None


def _finish(trial: Trial, run: Offload, graph: Graph, started: float) -> Trial:
    code = run.wait(RUN_TIMEOUT)
    trial.elapsed = time.monotonic() - started
    _judge(trial, run, code, graph)
    return trial


def member_fault(suite: Suite, fault: str) -> Trial:
    """A member killed or frozen (SIGSTOP) while it builds; it is healed after the run."""
    trial = Trial(fault)
    graph = Graph.write(suite.work, width=4, sleep=suite.rng.uniform(1.0, 3.0))
    started = time.monotonic()
    run = _start(suite, graph, suite.fleet.machines_file, "--exclude", SPECIAL)
    name = _busy_member(suite, run, suite.rng.uniform(0.0, 1.5))
    pids: list[int] = []
    hurt_at = time.time()
    if name is not None:
        member = suite.fleet.member(name)
        if fault == "killed":
            drop_member(member)
        else:
            pids = freeze(member)
    _finish(trial, run, graph, started)
    if name is not None:
        down = run.down_at(name, hurt_at)
        trial.notice = None if down is None else down - hurt_at
        trial.said = down is not None or trial.correct
    signal_all(pids, signal.SIGCONT)
    if fault == "killed":
        suite.heal()
    trial.left = audit(suite.fleet, graph.tag, suite.work, settle=20.0)
    return trial


def cut(suite: Suite) -> Trial:
    """A member's connection cut (its sshd session processes killed) while outputs move."""
    trial = Trial("cut")
    graph = Graph.write(suite.work, width=3, sleep=0.5, size=16 * 1024 * 1024)
    started = time.monotonic()
    run = _start(suite, graph, suite.fleet.machines_file, "--exclude", SPECIAL)

    def moving() -> list[str]:
        return [
            e["machine"] for e in list(run.events)
            if e["event"] == "job_phase" and e.get("phase") in {"sending", "fetching"}
        ]  # fmt: skip

    wait_until(lambda: run.proc.poll() is not None or bool(moving()), 60)
    time.sleep(suite.rng.uniform(0.0, 0.3))
    if moving():
        member = suite.fleet.member(suite.rng.choice(moving()))
        sessions = [pid for pid, cmd in member_processes(member) if cmd.startswith("sshd:")]
        signal_all([pid for pid in sessions if pid != member.pid], signal.SIGKILL)
    _finish(trial, run, graph, started)
    trial.left = audit(suite.fleet, graph.tag, suite.work)
    return trial


def store_full(suite: Suite) -> Trial:
    """A member's store full (a small tmpfs over it) when big outputs are built there."""
    trial = Trial("store full")
    member = suite.fleet.member("fzmed")
    fill_store(member, suite.rng.randint(256, 3 * 1024))
    graph = Graph.write(suite.work, width=3, sleep=0.2, size=4 * 1024 * 1024)
    started = time.monotonic()
    try:
        run = _start(suite, graph, suite.fleet.machines_file, "--on", "fzmed,fzslow")
        _finish(trial, run, graph, started)
        trial.said = "disk is full" in run.stderr or not any(
            e["event"] == "job_finished" and e["machine"] == "fzmed" and e["status"] != "built"
            for e in run.events
        )
    finally:
        empty_store(member)
    trial.left = audit(suite.fleet, graph.tag, suite.work)
    return trial


def interrupt(suite: Suite, sig: signal.Signals) -> Trial:
    """SIGINT (as Ctrl-C: to the process group) or SIGTERM at a random moment."""
    trial = Trial(sig.name)
    graph = Graph.write(suite.work, width=4, sleep=2.0)
    started = time.monotonic()
    run = _start(suite, graph, suite.fleet.machines_file, "--exclude", "fzbare")
    delay = suite.rng.uniform(0.1, 4.0)
    time.sleep(delay)
    if sig == signal.SIGINT:
        os.killpg(run.proc.pid, sig)
    else:
        run.proc.send_signal(sig)
    _finish(trial, run, graph, started)
    code = run.proc.returncode
    if not trial.correct and code != 128 + sig:
        # A clear error still, but not the exit status the CLI promises (128 + the signal).
        trial.note = f"exit {code}, not {128 + sig} (signal after {delay:.2f} s) {trial.note}"
    trial.left = audit(suite.fleet, graph.tag, suite.work)
    return trial


def restricted(suite: Suite) -> Trial:
    """Builds on a member whose key may run only ``nix-store --serve --write``."""
    trial = Trial("restricted")
    graph = Graph.write(suite.work, width=3, sleep=suite.rng.uniform(0.2, 1.0))
    started = time.monotonic()
    run = _start(suite, graph, suite.fleet.machines_file, "--on", "fzhard,fzslow")
    _finish(trial, run, graph, started)
    trial.said = any(e["event"] == "machine" and e.get("state") == "restricted" for e in run.events)
    trial.left = audit(suite.fleet, graph.tag, suite.work)
    return trial


def untrusted(suite: Suite) -> Trial:
    """Builds offered to a member whose Nix daemon does not trust the ssh user (it refuses
    unsigned inputs and input-addressed builds), beside one that works: they must go there."""
    trial = Trial("untrusted user")
    graph = Graph.write(suite.work, width=3, sleep=suite.rng.uniform(0.2, 1.0))
    started = time.monotonic()
    run = _start(suite, graph, suite.fleet.machines_file, "--on", "fzbare,fzslow")
    _finish(trial, run, graph, started)
    down = [
        e for e in run.events
        if e["event"] == "machine" and e["machine"] == "fzbare" and e.get("state") == "down"
    ]  # fmt: skip
    trial.said = (
        bool(down)
        and all("does not trust the ssh user" in e["message"] for e in down)
        and "'fzbare' does not trust the ssh user" in run.stderr
    )
    if not trial.said:
        trial.note = f"not said: {run.stderr.strip()[-400:]}"
    trial.left = audit(suite.fleet, graph.tag, suite.work)
    return trial


def wrong_key(suite: Suite, what: str) -> Trial:
    """One member's line with a changed host key or a client key it does not accept."""
    trial = Trial(what)
    victim = suite.rng.choice(["fzfast", "fzmed", "fzslow"])
    uri = suite.fleet.member(victim).uri
    other = next(line.split()[7] for line in suite.fleet.machines_file.read_text().splitlines()
                 if line.split()[0] != uri)  # fmt: skip
    key = suite.work / "stranger"
    if not key.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
            check=True,
        )

    def edit(columns: list[str]) -> None:
        if columns[0] == uri:
            if what == "host key changed":
                columns[7] = other
            else:
                columns[2] = str(key)

    graph = Graph.write(suite.work, width=3, sleep=0.3)
    started = time.monotonic()
    sshopts = "" if what == "host key changed" else _ssh_config_with_key(suite, victim, key)
    run = _start(suite, graph, suite.machines(edit=edit), "--exclude", SPECIAL, sshopts=sshopts)
    _finish(trial, run, graph, started)
    words = "host key" if what == "host key changed" else "key"
    trial.said = any(victim in line and words in line.lower() for line in run.stderr.splitlines())
    if not trial.said:
        trial.note = f"not said: {run.stderr.strip()[-400:]}"
    trial.left = audit(suite.fleet, graph.tag, suite.work)
    return trial


def crowd(suite: Suite) -> Trial:
    """Three ``offload build`` runs and a ``nix-build`` through offload-hook at once."""
    trial = Trial("3 clients + hook")
    graphs = [Graph.write(suite.work, width=4, sleep=suite.rng.uniform(0.3, 1.5)) for _ in "abcd"]
    started = time.monotonic()
    runs = [_start(suite, g, suite.fleet.machines_file, "--exclude", SPECIAL) for g in graphs[:3]]
    env = offload_env(suite.fleet, suite.work)
    hook = subprocess.run(
        ["nix-build", str(graphs[3].file), "--no-out-link", "-j0", "--option", "build-hook",
         HOOK, "--option", "substituters", "", "--builders", f"@{suite.machines(drop='fzbare')}"],
        env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
    )  # fmt: skip
    trials = [_finish(Trial("part"), run, g, started) for run, g in zip(runs, graphs, strict=False)]
    out = hook.stdout.split()
    hook_ok = (
        hook.returncode == 0 and bool(out) and Path(out[-1]).read_bytes() == graphs[3].expected
    )
    trial.correct = all(t.correct for t in trials) and hook_ok
    trial.note = "; ".join(t.note for t in trials if t.note) + (
        "" if hook_ok else hook.stderr[-300:]
    )
    trial.elapsed = time.monotonic() - started
    from offload.hook import coordinator

    state = suite.work / "tmp" / "state"
    coordinator.stop_coordinators(state, 30)
    # The hook's ssh masters outlive it by design (ControlPersist, 120 s idle): end them now,
    # as their idle time would, so that what is left is what should not be.
    for socket in location(state).glob("*"):
        if socket.is_socket():
            subprocess.run(
                ["ssh", "-O", "exit", "-o", f"ControlPath={ssh_path(socket)}", "x"],
                capture_output=True, check=False, timeout=10,
            )  # fmt: skip
    for graph in graphs:
        left = audit(suite.fleet, graph.tag, suite.work)
        for name in ("partial", "broken", "processes", "locks"):
            getattr(trial.left, name).extend(getattr(left, name))
    return trial


FAULTS: dict[str, Callable[[Suite], Trial]] = {
    "restricted": restricted,
    "untrusted user": untrusted,
    "killed": lambda s: member_fault(s, "killed"),
    "frozen": lambda s: member_fault(s, "frozen"),
    "cut": cut,
    "store full": store_full,
    "SIGINT": lambda s: interrupt(s, signal.SIGINT),
    "SIGTERM": lambda s: interrupt(s, signal.SIGTERM),
    "3 clients + hook": crowd,
    "host key changed": lambda s: wrong_key(s, "host key changed"),
    "wrong key": lambda s: wrong_key(s, "wrong key"),
}


def clean_work(work: Path) -> None:
    shutil.rmtree(work / "tmp", ignore_errors=True)
