"""What every fault run shares: the fleet's members hurt and healed, offload run in the
background, and the audit of what a run left behind.

A run builds a small graph of fresh derivations whose names carry the run's tag, so what it
left on any store (this host's is shared with other work) is found by name: a *partial* path is
an entry of a store directory with the tag that the store does not hold as valid; a *broken*
one is valid but fails ``nix-store --verify-path``. Leftovers are processes of the run still
alive (on members: anything whose command line has the tag, or a serve program once the run is
over; here: ssh processes using the run's temporary directory, but for the ssh master kept for
the next run, ``offload.transport.persist``, stopped once audited) and held slot locks of the
members (``offload.slots``).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers.fleets import member_processes, stop_masters

from offload.fleet import Fleet, Member
from offload.slots import NIX_CURRENT_LOAD, SlotLocks, slot_key
from offload.transport.persist import location

# Builds run without a sandbox and with an empty PATH (see tests/helpers/nix_files.py).
GRAPH = """let
  salt = "{salt}";
  mk = name: script: extra: derivation ({{
    name = "{tag}-${{name}}";
    inherit salt;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
  }} // extra);
  leaf = i: mk "leaf${{toString i}}" "/bin/sleep {sleep}; echo leaf${{toString i}}-${{salt}} > $out;
    /usr/bin/head -c {size} /dev/zero >> $out" {{}};
  leaves = map leaf [ {leaves} ];
in mk "root" "/bin/cat ${{toString leaves}} > $out" {{ inherit leaves; }}
"""


@dataclass
class Graph:
    """A fresh graph: ``width`` leaves of ``size`` bytes that sleep, and a root that joins them."""

    file: Path
    tag: str
    expected: bytes

    @classmethod
    def write(cls, work: Path, *, width: int = 4, sleep: float = 1.0, size: int = 0) -> Graph:
        salt = uuid.uuid4().hex
        tag = f"ofz{salt[:10]}"
        text = GRAPH.format(
            salt=salt, tag=tag, sleep=sleep, size=size, leaves=" ".join(map(str, range(width)))
        )
        file = work / f"{tag}.nix"
        file.write_text(text)
        expected = b"".join(f"leaf{i}-{salt}\n".encode() + b"\0" * size for i in range(width))
        return cls(file, tag, expected)


class Offload:
    """``offload build --json`` in the background; its events are read as they come."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], cwd: Path) -> None:
        self.events: list[dict[str, Any]] = []
        self.proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        )  # fmt: skip
        self.stderr = ""
        self._out = threading.Thread(target=self._read, daemon=True)
        self._err = threading.Thread(target=self._read_err, daemon=True)
        self._out.start()
        self._err.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                event = json.loads(line)
                event["seen"] = time.time()
                self.events.append(event)

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()

    def wait(self, timeout: float) -> int | None:
        """The exit status, or None when it had to be killed after ``timeout`` seconds."""
        try:
            code: int | None = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            code = None
        self._out.join(10)
        self._err.join(10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        return code

    def building_on(self) -> set[str]:
        """Machines with a build started and not yet finished, from the events so far."""
        running: dict[tuple[str, str], int] = {}
        for event in list(self.events):
            key = (event.get("drv_path", ""), event.get("machine", ""))
            if event["event"] == "job_phase" and event.get("phase") == "building":
                running[key] = 1
            elif event["event"] == "job_finished":
                running.pop(key, None)
        return {machine for _, machine in running}

    def down_at(self, machine: str, since: float) -> float | None:
        """When offload first said ``machine`` is down after ``since`` (wall clock), if it did."""
        for event in list(self.events):
            is_down = event["event"] == "machine" and event.get("state") == "down"
            if is_down and event["machine"] == machine and float(event["time"]) >= since:
                return float(event["time"])
        return None


def offload_env(fleet: Fleet, work: Path) -> dict[str, str]:
    env = fleet.env()
    env["NIX_CONFIG"] = env.get("NIX_CONFIG", "") + "\nsubstituters =\n"
    # A state of its own per run: a builder backed off by the last fault starts healthy.
    env["OFFLOAD_STATE_DIR"] = str(work / "tmp" / "state")
    env["TMPDIR"] = str(work / "tmp")
    (work / "tmp" / "state").mkdir(parents=True, exist_ok=True)
    return env


def offload_argv(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "offload", "build", "--json", "--no-out-link", *map(str, args)]


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# -- hurting members ---------------------------------------------------------------------------


def member_pids(member: Member) -> list[int]:
    return [member.pid, *(pid for pid, _ in member_processes(member) if pid != member.pid)]


def freeze(member: Member) -> list[int]:
    """SIGSTOP every process of the member, again until none is new: one forked while the
    first ones were being stopped (a new session) would otherwise still answer."""
    stopped: list[int] = []
    while fresh := [pid for pid in member_pids(member) if pid not in stopped]:
        signal_all(fresh, signal.SIGSTOP)
        stopped += fresh
    return stopped


def signal_all(pids: Sequence[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            continue


def in_member(member: Member, script: str) -> subprocess.CompletedProcess[str]:
    """``script`` run as root in the member's mount namespace (its /nix, its /etc/nix)."""
    return subprocess.run(
        ["nsenter", "-t", str(member.pid), "-m", "sh", "-c", script],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


def fill_store(member: Member, spare_kib: int) -> None:
    """Put the member's store on a tmpfs with ``spare_kib`` free, holding what it held."""
    script = (
        "d=$(mktemp -d /tmp/ofz-full.XXXXXX) && "
        "used=$(du -sk /nix/store | cut -f1) && "
        f'mount -t tmpfs -o size=$((used + {spare_kib}))k ofz-full "$d" && '
        'cp -a /nix/store/. "$d"/ && mount --move "$d" /nix/store && rmdir "$d"'
    )
    done = in_member(member, script)
    if done.returncode != 0:
        raise RuntimeError(f"cannot fill {member.name}'s store: {done.stderr.strip()}")


def empty_store(member: Member) -> None:
    """Undo ``fill_store``: what was registered meanwhile goes back to the member's own disk."""
    own = shlex.quote(str(member.root / "nix" / "store"))
    done = in_member(member, f"cp -a /nix/store/. {own}/ && umount /nix/store")
    if done.returncode != 0:
        raise RuntimeError(f"cannot restore {member.name}'s store: {done.stderr.strip()}")


# -- the audit ---------------------------------------------------------------------------------


@dataclass
class Leftovers:
    partial: list[str] = field(default_factory=list)  # unregistered paths with the run's tag
    broken: list[str] = field(default_factory=list)  # registered, failing --verify-path
    processes: list[str] = field(default_factory=list)
    locks: list[str] = field(default_factory=list)


_STORE_AUDIT = """tag=$1
for p in /nix/store/*"$tag"*; do
  case $p in *.lock|*.drv|*"*"*) continue;; esac
  if nix-store --check-validity "$p" >/dev/null 2>&1; then
    nix-store --verify-path "$p" >/dev/null 2>&1 || echo "broken $p"
  else
    echo "partial $p"
  fi
done"""


def audit_store(where: str, run: Callable[[str], subprocess.CompletedProcess[str]], tag: str,
                into: Leftovers) -> None:  # fmt: skip
    done = run(f"set -- {shlex.quote(tag)}; {_STORE_AUDIT}")
    for line in done.stdout.splitlines():
        kind, _, path = line.partition(" ")
        (into.partial if kind == "partial" else into.broken).append(f"{where}:{path}")


def _local(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", script],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def audit(fleet: Fleet, tag: str, work: Path, *, settle: float = 10.0) -> Leftovers:
    """What the run tagged ``tag`` left anywhere; processes get ``settle`` seconds to end."""
    found = Leftovers()

    def processes() -> list[str]:
        left = []
        for member in fleet.members:
            for pid, cmd in member_processes(member):
                if pid != member.pid and (tag in cmd or "--serve" in cmd):
                    left.append(f"{member.name}:{pid}:{cmd[:80]}")
        for entry in Path("/proc").iterdir():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, UnicodeDecodeError):
                continue
            if cmd.startswith("ssh: ") and cmd.rstrip().endswith("[mux]"):
                continue  # a master kept for the next run (offload.transport.persist)
            if str(work / "tmp") in cmd or (tag in cmd and "nsenter" not in cmd):
                left.append(f"local:{entry.name}:{cmd[:80]}")
        return left

    wait_until(lambda: not processes(), settle)
    found.processes = processes()
    stop_masters(location(work / "tmp" / "state"))  # the next run gets a state of its own
    locks = SlotLocks(NIX_CURRENT_LOAD) if os.access(NIX_CURRENT_LOAD, os.W_OK) else None
    for member in fleet.members:

        def inside(script: str, member: Member = member) -> subprocess.CompletedProcess[str]:
            return in_member(member, script)

        audit_store(member.name, inside, tag, found)
        if locks is not None:
            slots = member.spec.jobs
            probe = locks.probe(slot_key(member.uri), slots)
            if probe.free < slots:
                found.locks.append(f"{member.name}: {slots - probe.free} held")
    audit_store("local", _local, tag, found)
    return found
