"""Outputs lost with their builder, on the real fleet.

Intermediate outputs stay on the builder that made them. When that builder goes down before a
dependent has received them, the run builds them again elsewhere; once the dependent has them
in its own store, losing the builder costs nothing.

The fleet is private (members are killed) and its machines file routes work with features every
member's own Nix offers: fast demands `kvm`, medium demands `nixos-test`, slow takes `kvm` work
too but is slower, so `kvm` work goes to fast first and, with fast down, to slow. Builders share
/tmp with the host (see tests/helpers/nix_files.py), so they leave counters, markers and wait
for release files under ``tmp_path``.
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from offload.fleet import Fleet
from tests.helpers import processes
from tests.helpers.fleets import (
    drop_member,
    host_of,
    machines_lines,
    private_fleet_fixture,
    speed_of,
)
from tests.helpers.nix_files import SPEED, marker_script, nix_file, out_path, salt_of, valid_locally
from tests.helpers.offload_run import events, finished, offload_argv, offload_env, wait_for

# Builds wait for a release file this many times 0.1 s at most, then fail: never forever.
POLLS = 300


own_fleet = private_fleet_fixture(
    prefix="ofo",
    doc="A private fast/medium/slow fleet (as the shared one) for tests that kill members.",
)


def routed(fleet: Fleet, tmp_path: Path) -> Path:
    """fast demands `kvm`, medium demands `nixos-test`, slow offers `kvm` without demanding it."""
    features = {
        "fast": ("kvm", "kvm"),
        "medium": ("nixos-test", "nixos-test"),
        "slow": ("kvm", "-"),
    }
    lines = []
    for columns in machines_lines(fleet):
        columns[5], columns[6] = features[str(host_of(columns[0]))]
        lines.append(" ".join(columns))
    machines = tmp_path / "machines"
    machines.write_text("\n".join(lines) + "\n")
    return machines


def wait_then(marker: Path, release: Path, then: str) -> str:
    """Shell: mark that the build runs, wait (bounded) for ``release``, then ``then``."""
    loop = (
        f"i=0; while [ ! -e {release} ]; do i=$((i+1)); "
        f"if [ $i -gt {POLLS} ]; then echo no release >&2; exit 1; fi; /bin/sleep 0.1; done"
    )
    return marker_script(marker, f"{loop}; {then}")


class Run:
    """``offload build --json`` in the background; its events are read as they come."""

    def __init__(self, fleet: Fleet, tmp_path: Path, *args: str | Path) -> None:
        self.stderr = tmp_path / "stderr"
        self.lines: list[str] = []
        with self.stderr.open("w") as err:
            self.proc: subprocess.Popen[str] = processes.start(
                offload_argv(*args, "--json", "--no-out-link"),
                env=offload_env(fleet, tmp_path),
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def stdout(self) -> str:
        return "".join(self.lines)

    def has_finished(self, name: str, machine: str, status: str) -> bool:
        if self.proc.poll() is not None and not self._reader.is_alive():
            pytest.fail(f"offload ended (rc {self.proc.returncode}) too early:\n{self.report()}")
        return any(
            (e["name"], e["machine"], e["status"]) == (name, machine, status)
            for e in finished(self.stdout)
        )

    def wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.close()
            pytest.fail(f"offload still running after {timeout} s:\n{self.report()}")
        self._reader.join(timeout)
        return code

    def report(self) -> str:
        return f"{self.stderr.read_text()}\n{self.stdout}"

    def close(self) -> None:
        """Stop offload if it still runs; the reader alone reads its stdout, to the end."""
        processes.kill_group(self.proc)
        self.proc.wait()
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def machine_events(stdout: str) -> list[dict[str, Any]]:
    return [e for e in events(stdout) if e["event"] == "machine"]


def statuses(stdout: str, name: str) -> list[tuple[str, str]]:
    return [(e["machine"], e["status"]) for e in finished(stdout) if e["name"] == name]


def test_outputs_lost_before_the_dependent_got_them_are_built_again(own_fleet, tmp_path):
    counter, marker, release = tmp_path / "counter", tmp_path / "gate-running", tmp_path / "go"
    gate = wait_then(marker, release, "echo gate > $out")
    file = nix_file(
        tmp_path,
        f"""rec {{
  a = mk "a" "echo run >> {counter}; echo a-${{salt}} > $out; {SPEED} >> $out"
    {{ requiredSystemFeatures = [ "kvm" ]; }};
  gate = mk "gate" "{gate}" {{ requiredSystemFeatures = [ "nixos-test" ]; }};
  b = mk "b" "/bin/cat $a > $out" {{ inherit a gate; requiredSystemFeatures = [ "nixos-test" ]; }};
}}
""",
    )
    a, b = out_path(file, "a"), out_path(file, "b")
    machines = routed(own_fleet, tmp_path)
    run = Run(own_fleet, tmp_path, file, "-A", "b", "--builders", f"@{machines}", "-j", "0")
    try:
        wait_for(
            lambda: run.has_finished("a", "fast", "built") and marker.exists(),
            20,
            "a built on fast and gate running on medium",
        )
        assert own_fleet.store_has("fast", a)
        assert not own_fleet.store_has("medium", a)  # b has not received it yet
        assert counter.read_text() == "run\n"
        drop_member(own_fleet.member("fast"))
        release.touch()
        code = run.wait(30)
    finally:
        run.close()
    assert code == 0, run.report()
    out = run.stdout
    assert counter.read_text() == "run\nrun\n"
    assert statuses(out, "a") == [("fast", "built"), ("slow", "built")]
    assert statuses(out, "gate") == [("medium", "built")]
    # b's first copy gave up fetching a from fast (no fault of medium's, which stays up); that
    # is when the run found fast gone, and only then did a run again.
    assert statuses(out, "b") == [("medium", "cancelled"), ("medium", "built")]
    down = [(e["machine"], e["state"]) for e in machine_events(out)]
    assert ("fast", "down") in down
    assert ("medium", "down") not in down
    assert ("slow", "down") not in down
    order = [
        (e["event"], e.get("name"), e["machine"], e.get("status") or e.get("state"))
        for e in events(out)
        if e["event"] in {"machine", "job_finished"}
    ]
    assert order.index(("machine", None, "fast", "down")) < order.index(
        ("job_finished", "a", "slow", "built")
    )
    assert valid_locally(b)
    made_on_slow = f"a-{salt_of(file)}\n{speed_of(own_fleet, 'slow')}\n"
    assert Path(b).read_text() == made_on_slow
    assert (own_fleet.member("slow").root / "nix" / "store" / Path(a).name).read_text() == (
        made_on_slow
    )
    assert not valid_locally(a)  # only the requested output came home


def test_outputs_a_running_dependent_already_has_are_not_built_again(own_fleet, tmp_path):
    counter, release = tmp_path / "counter", tmp_path / "go"
    b_running, c_running = tmp_path / "b-running", tmp_path / "c-running"
    # c keeps a build going on fast, so the run sees fast go down while b runs on medium.
    b_script = wait_then(b_running, release, "/bin/cat $a > $out")
    c_script = wait_then(c_running, release, f"{SPEED} > $out")
    file = nix_file(
        tmp_path,
        f"""rec {{
  a = mk "a" "echo run >> {counter}; echo a-${{salt}} > $out; {SPEED} >> $out"
    {{ requiredSystemFeatures = [ "kvm" ]; }};
  b = mk "b" "{b_script}" {{ inherit a; requiredSystemFeatures = [ "nixos-test" ]; }};
  c = mk "c" "{c_script}" {{ requiredSystemFeatures = [ "kvm" ]; }};
}}
""",
    )
    a, b, c = out_path(file, "a"), out_path(file, "b"), out_path(file, "c")
    machines = routed(own_fleet, tmp_path)
    args = (file, "-A", "b", "-A", "c", "--builders", f"@{machines}", "-j", "0")
    run = Run(own_fleet, tmp_path, *args)
    try:
        # b's builder runs only once its inputs are valid in medium's store.
        wait_for(lambda: run.has_finished("a", "fast", "built") and b_running.exists(), 20, "b")
        wait_for(c_running.exists, 20, "c running")
        assert c_running.read_text().strip() == speed_of(own_fleet, "fast")
        assert own_fleet.store_has("medium", a)
        drop_member(own_fleet.member("fast"))
        wait_for(lambda: run.has_finished("c", "fast", "lost"), 20, "the run to see fast go")
        release.touch()
        code = run.wait(30)
    finally:
        run.close()
    assert code == 0, run.report()
    out = run.stdout
    assert ("fast", "down") in [(e["machine"], e["state"]) for e in machine_events(out)]
    assert counter.read_text() == "run\n"
    assert statuses(out, "a") == [("fast", "built")]
    assert statuses(out, "b") == [("medium", "built")]
    assert statuses(out, "c") == [("fast", "lost"), ("slow", "built")]
    assert valid_locally(b)
    assert Path(b).read_text() == f"a-{salt_of(file)}\n{speed_of(own_fleet, 'fast')}\n"
    assert Path(c).read_text().strip() == speed_of(own_fleet, "slow")
    assert not valid_locally(a)
