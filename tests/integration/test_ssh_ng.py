"""``ssh-ng://`` builders spoken to in the daemon's protocol, real Nix 2.8 on both sides (issue 17).

The fleet: ``ng`` is a normal member listed as ``ssh-ng://`` (its sessions run ``nix-daemon
--stdio`` behind offload's start line), ``ngd`` one whose sshd forces ``nix-daemon --stdio``
(``ForceCommand``; the fleet lists it as ``ssh-ng://``), and ``sv`` a plain ``ssh://`` member.
Where a derivation was built is proved by its output (the member's speed file) and the
``--json`` events. The kill tests get members of their own: a member dropped mid-transfer or
mid-build must leave no partial path in its store (checked from the host, on its store
directory, with ``nix-store --verify`` and its valid paths) while the run finishes elsewhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from offload.fleet import Fleet, Member, MemberSpec
from offload.transport.links.turns import DAEMON_RESTRICTED_FALLBACK
from tests.helpers.fleets import drop_member, member_line, private_fleet_fixture, speed_of
from tests.helpers.nix_files import SPEED, marker_script, nix_file, out_path, valid_locally
from tests.helpers.offload_run import (
    built_on,
    events,
    offload,
    start_offload,
    wait_for,
    wait_for_marker,
)
from tests.helpers.processes import stop

HOOK = str(Path(sys.executable).parent / "offload-hook")
NG, NGD, SV = "ng", "ngd", "sv"

ng_fleet = private_fleet_fixture(
    [
        MemberSpec.parse(f"{NG}:2:2"),
        MemberSpec.parse(f"{NGD}:3:1:daemon@sshd"),
        MemberSpec.parse(f"{SV}:1:1"),
    ],
    "ofng",
    scope="module",
    doc="ssh-ng:// members, one forced to nix-daemon --stdio by sshd, and an ssh:// one.",
)
KILLED = ("ka", "kb")
kill_fleet = private_fleet_fixture(
    [MemberSpec.parse("ka:2:1"), MemberSpec.parse("kb:3:1")],
    "ofnk",
    doc="Two ssh-ng:// members, one of which each test kills.",
)

# The builder announces a phase of its own, as stdenv does: Nix turns the line into a
# setPhase result the daemon passes on.
PHASE = r"""echo '@nix {\"action\":\"setPhase\",\"phase\":\"ngPhase\"}' >&2; """
GRAPH = """rec {
  dep = mk "dep" "PHASEecho dep-${salt} > $out; SPEED >> $out" {};
  top = mk "top" "/bin/cat $dep > $out; SPEED >> $out" { inherit dep; };
}
""".replace("SPEED", SPEED).replace("PHASE", PHASE)


def line_of(fleet: Fleet, name: str) -> str:
    """Member ``name``'s machines line, as ``ssh-ng://`` whatever the fleet wrote."""
    line = member_line(fleet, name)
    return line.replace(f"ssh://{name}?", f"ssh-ng://{name}?", 1)


def serve_line(fleet: Fleet, name: str) -> str:
    return member_line(fleet, name)


def member_store(member: Member, *args: str) -> subprocess.CompletedProcess[str]:
    """``nix-store`` on the member's own store, from the host (works with the member dead)."""
    return subprocess.run(
        ["nix-store", "--store", str(member.root), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def assert_no_partial_path(member: Member, path: str) -> None:
    assert member_store(member, "--check-validity", path).returncode != 0, f"{path} is valid"
    verify = member_store(member, "--verify")
    assert verify.returncode == 0, verify.stderr
    assert "error" not in verify.stderr.lower(), verify.stderr


pytestmark = pytest.mark.usefixtures("coordinators_stopped")


def test_the_fleet_lists_a_member_forced_to_the_daemon_as_ssh_ng(ng_fleet: Fleet) -> None:
    text = ng_fleet.machines_file.read_text()
    assert f"ssh-ng://{NGD}?ssh-key={ng_fleet.client_key} " in text
    assert f"ssh://{NG}?ssh-key={ng_fleet.client_key} " in text
    config = (ng_fleet.member(NGD).root / "sshd_config").read_text()
    assert "ForceCommand nix-daemon --stdio\n" in config


@pytest.mark.parametrize("name", [NG, NGD])
def test_a_graph_builds_over_ssh_ng_with_the_builders_own_phases(
    ng_fleet: Fleet, tmp_path: Path, name: str
) -> None:
    file = nix_file(tmp_path, GRAPH)
    done = offload(
        ng_fleet, tmp_path, file, "-A", "top", "-j0", "--builders", line_of(ng_fleet, name),
        "--no-out-link", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert built_on(done.stdout) == {"dep": name, "top": name}
    top = out_path(file, "top")
    assert valid_locally(top)
    lines = Path(top).read_text().splitlines()
    assert lines[-1] == lines[-2] == speed_of(ng_fleet, name)
    seen = events(done.stdout)
    steps = [e["step"] for e in seen if e["event"] == "job_phase" and e.get("step")]
    assert steps == ["ngPhase"], seen
    notes = [e for e in seen if e["event"] == "machine" and e["state"] == "restricted"]
    if name == NGD:
        assert [e["machine"] for e in notes] == [NGD]
        assert "`nix-daemon --stdio`" in notes[0]["message"]
        assert "load is not known" in notes[0]["message"]
    else:
        assert not notes


def test_a_graph_spreads_over_ssh_ng_and_ssh_members_as_planned(
    ng_fleet: Fleet, tmp_path: Path
) -> None:
    body = "[ " + " ".join(f'(mk "leaf{i}" "/bin/sleep 1; {SPEED} > $out" {{}})' for i in range(4))
    file = nix_file(tmp_path, body + " ]\n")
    builders = "\n".join([line_of(ng_fleet, NG), line_of(ng_fleet, NGD), serve_line(ng_fleet, SV)])
    done = offload(
        ng_fleet, tmp_path, file, "-j0", "--builders", builders, "--no-out-link", "--json",
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    where = built_on(done.stdout)
    assert len(where) == 4
    assert {NG, NGD} & set(where.values()), where
    speeds = {name: speed_of(ng_fleet, name) for name in (NG, NGD, SV)}
    for path in done.stdout.split():
        if path.startswith("/nix/store/"):
            assert valid_locally(path)
    # Each output says where it was built, and that is where the run said it built it.
    for entry in [e for e in events(done.stdout) if e["event"] == "job_finished"]:
        drv = entry["drv_path"]
        out = subprocess.run(
            ["nix-store", "-q", "--outputs", drv], capture_output=True, text=True, check=True
        ).stdout.split()[0]
        assert Path(out).read_text().strip() == speeds[entry["machine"]]


def test_status_says_a_builder_forced_to_the_daemon_runs_only_the_daemon(
    ng_fleet: Fleet, tmp_path: Path
) -> None:
    file = nix_file(tmp_path, GRAPH)
    line = line_of(ng_fleet, NGD)
    done = offload(ng_fleet, tmp_path, file, "-A", "dep", "-j0", "--builders", line)
    assert done.returncode == 0, done.stderr
    argv = [sys.executable, "-m", "offload", "status", "--builders", line]
    env = {**ng_fleet.env(), "OFFLOAD_STATE_DIR": str(tmp_path / "state")}
    said = subprocess.run(
        [*argv, "--json"], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    machines = {m["name"]: m for m in json.loads(said.stdout)["machines"]}
    assert machines[NGD]["slot_fallback"]["reason"] == DAEMON_RESTRICTED_FALLBACK
    text = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=True)
    assert "its key runs only `nix-daemon --stdio`" in text.stdout
    assert "serve program" not in text.stdout


@pytest.mark.parametrize("name", [NG, NGD])
def test_doctor_speaks_the_daemon_protocol_and_says_2_8_does_not_report_trust(
    ng_fleet: Fleet, tmp_path: Path, name: str
) -> None:
    machines = tmp_path / "machines"
    machines.write_text(line_of(ng_fleet, name) + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "offload", "doctor", "--json", "--builders", f"@{machines}"],
        env={**ng_fleet.env(), "OFFLOAD_STATE_DIR": str(tmp_path / "state")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (report,) = json.loads(done.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["serve"]["verdict"] == "ok"
    assert checks["serve"]["detail"].startswith("daemon protocol 1.34")
    if name == NGD:
        assert "`nix-daemon --stdio`" in checks["serve"]["detail"]
        # Neither nix.conf nor the daemon says: an unsigned probe path is offered (doctor.trust).
        assert checks["trusted"]["verdict"] == "ok"
        assert checks["trusted"]["detail"].startswith("the builder took an unsigned path")
    else:
        assert "does not report trust (Nix before 2.15)" in checks["trusted"]["detail"]
        assert checks["trusted"]["verdict"] == "ok"
        assert checks["nix"]["detail"].startswith("Nix 2.8")


def test_offload_hook_builds_over_an_ssh_ng_builder(ng_fleet: Fleet, tmp_path: Path) -> None:
    file = nix_file(tmp_path, GRAPH)
    env = ng_fleet.env()
    env["OFFLOAD_STATE_DIR"] = str(tmp_path / "state")
    done = subprocess.run(
        [
            "nix-build", str(file), "-A", "top", "--no-out-link", "-j0",
            "--option", "build-hook", HOOK, "--option", "substituters", "",
            "--builders", line_of(ng_fleet, NGD),
        ],
        env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    top = done.stdout.split()[0]
    assert Path(top).read_text().splitlines()[-1] == speed_of(ng_fleet, NGD)
    assert "runs only `nix-daemon --stdio`" in done.stderr


def build_and_drop(
    fleet: Fleet, tmp_path: Path, file: Path, victim: Callable[[subprocess.Popen[str]], str]
) -> tuple[str, str]:
    """``offload build`` of ``file`` over both ssh-ng members; the member ``victim`` names
    (it waits for the moment) is dropped. Returns (the dropped member, the run's stdout)."""
    builders = "\n".join(line_of(fleet, name) for name in KILLED)
    proc = start_offload(
        fleet, tmp_path, file, "-j0", "--builders", builders, "--no-out-link", "--json"
    )
    try:
        name = victim(proc)
        drop_member(fleet.member(name))
        out, err = proc.communicate(timeout=180)
    finally:
        stop(proc)
    assert proc.returncode == 0, err
    return name, out


def test_a_member_killed_mid_build_leaves_no_partial_path(
    kill_fleet: Fleet, tmp_path: Path
) -> None:
    # Long on the member that is killed under it, at once on the other: the first build only
    # waits (the run's rebuild waited its 30 s too, the test's 31 s).
    marker, once = tmp_path / "marker", tmp_path / "once"
    wait = f"if [ -e {once} ]; then :; else : > {once}; /bin/sleep 30; fi"
    script = f"{marker_script(marker, wait)}; {SPEED} > $out"
    file = nix_file(tmp_path, f'{{ slow = mk "slow" "{script}" {{}}; }}\n')

    def building(proc: subprocess.Popen[str]) -> str:
        speed = wait_for_marker(marker, proc)
        return next(n for n in KILLED if speed_of(kill_fleet, n) == speed)

    victim, out = build_and_drop(kill_fleet, tmp_path, file, building)
    (other,) = set(KILLED) - {victim}
    assert built_on(out) == {"slow": other}
    path = out_path(file, "slow")
    assert Path(path).read_text().strip() == speed_of(kill_fleet, other)
    assert_no_partial_path(kill_fleet.member(victim), path)


def test_a_member_killed_mid_transfer_leaves_no_partial_path(
    kill_fleet: Fleet, tmp_path: Path
) -> None:
    big = tmp_path / "big"
    big.write_bytes(os.urandom(96 * 1024 * 1024))  # incompressible: the copy takes a while
    script = f"/bin/cat ${{{big}}} > /dev/null; {SPEED} > $out"
    file = nix_file(tmp_path, f'{{ uses-big = mk "uses-big" "{script}" {{}}; }}\n')
    src = subprocess.run(
        ["nix-store", "--add", str(big)], capture_output=True, text=True, check=True
    ).stdout.strip()
    arriving = {n: kill_fleet.member(n).root / src.lstrip("/") for n in KILLED}

    def receiving(proc: subprocess.Popen[str]) -> str:
        # The daemon unpacks straight into the store: the path's directory appears mid-copy.
        wait_for(
            lambda: any(p.exists() for p in arriving.values()) or proc.poll() is not None,
            60,
            "the input arriving",
        )
        assert proc.poll() is None, proc.communicate()
        return next(n for n, p in arriving.items() if p.exists())

    victim, out = build_and_drop(kill_fleet, tmp_path, file, receiving)
    (other,) = set(KILLED) - {victim}
    assert built_on(out) == {"uses-big": other}
    # Still unregistered when the member died: it was cut mid-copy, and left nothing valid.
    assert_no_partial_path(kill_fleet.member(victim), src)
