"""The pool changed while offload-hook's coordinator lives, under real Nix 2.8.

The coordinator keeps its sessions to the builders from one nix-build to the next (and lives as
long as builds keep coming: all day on a busy nix-daemon). A machines line changed meanwhile
(more jobs, a builder reinstalled and its host key pinned anew) is what the next nix-build
uses: not the sessions, ssh connection and builder-side slot count made for the old line. And
an ``offload use`` choice made while derivations wait there for a slot is what they follow.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from offload.fleet import Fleet, MemberSpec
from tests.helpers.fleets import (
    fleet_machine,
    member_line,
    member_processes,
    private_fleet_fixture,
    speed_of,
)
from tests.helpers.hook_runs import (
    coordinator_pids,
    hook_env,
    leaves,
    nix_build,
    nix_build_argv,
    outputs,
    start_nix_build,
)
from tests.helpers.nix_files import SPEED, nix_file
from tests.helpers.offload_run import wait_for
from tests.helpers.processes import start, stop

# he1 is the faster: a derivation goes there first whenever it can.
edit_fleet = private_fleet_fixture(
    [MemberSpec("he1", 2.0, 1), MemberSpec("he2", 1.0, 1)], "ofe", scope="module"
)

pytestmark = pytest.mark.usefixtures("coordinators_stopped")


def _machines(tmp_path: Path, *lines: str) -> str:
    machines = tmp_path / "machines"
    machines.write_text("".join(f"{line}\n" for line in lines))
    return f"@{machines}"


def _columns(line: str, **changed: str) -> str:
    columns = line.split()
    for index, value in changed.items():
        columns[int(index.removeprefix("c"))] = value
    return " ".join(columns)


def _serving(fleet: Fleet, name: str) -> bool:
    return any("nix-store --serve" in cmd for _, cmd in member_processes(fleet.member(name)))


def _met(tmp_path: Path) -> str:
    """Two derivations that each wait (30 s at most) for the other to start, and say whether
    they met: only two builds running at once meet."""
    here = tmp_path / "started"
    here.mkdir()
    script = (
        f"/bin/touch {here}/$name; i=0; "
        f"while [ ! -e {here}/a ] || [ ! -e {here}/b ]; do "
        "[ $i -ge 300 ] && break; /bin/sleep 0.1; i=$((i+1)); done; "
        f"if [ -e {here}/a ] && [ -e {here}/b ]; then echo met; else echo alone; fi > $out"
    )
    return f'[ (mk "a" "{script}" {{}}) (mk "b" "{script}" {{}}) ]\n'


def test_more_jobs_given_to_a_builder_are_used_by_the_live_coordinator(
    edit_fleet: Fleet, tmp_path: Path
) -> None:
    # Before, the coordinator kept the builder's first link, counting 1 slot on the builder:
    # the second build there waited for the first, said held "by another client".
    one = member_line(edit_fleet, "he1")
    first = nix_build(edit_fleet, tmp_path, nix_file(tmp_path, leaves(1)), "-j0",
                      builders=_machines(tmp_path, one))  # fmt: skip
    outputs(first)
    assert coordinator_pids(tmp_path / "state")
    # The first build's session has let its slot on he1 go (it lingers 1 s for a next build).
    wait_for(lambda: not _serving(edit_fleet, "he1"), 30, "he1's session to close")
    two = _columns(one, c3="2")
    file = nix_file(tmp_path, _met(tmp_path), name="met.nix")
    done = nix_build(edit_fleet, tmp_path, file, "-j0", builders=_machines(tmp_path, two))
    assert [Path(path).read_text().strip() for path in outputs(done)] == ["met", "met"]
    assert "held by another client" not in done.stderr
    assert len(coordinator_pids(tmp_path / "state")) == 1  # the same coordinator did both


def _serve_sessions(fleet: Fleet, name: str) -> int:
    return sum("nix-store --serve" in cmd for _, cmd in member_processes(fleet.member(name)))


def test_a_build_on_a_line_edited_meanwhile_lets_its_slot_go_at_once(
    edit_fleet: Fleet, tmp_path: Path
) -> None:
    # x builds on he1 under its old line (1 job) while a nix-build on the new line (2 jobs)
    # runs: once x ends, its session held one of he1's slots LINGER (1 s) more for a next
    # build under a line no longer read, so the new line's second build waited for it. Now it
    # closes with its build, before the hook's nix-build ends.
    one = member_line(edit_fleet, "he1")
    go = tmp_path / "go"
    script = f"i=0; while [ ! -e {go} ] && [ $i -lt 600 ]; do /bin/sleep 0.1; i=$((i+1)); done"
    x = nix_file(tmp_path, f'[ (mk "x" "{script}; echo > $out" {{}}) ]\n', name="x.nix")
    argv = nix_build_argv(x, _machines(tmp_path, one), "-j0")
    env = hook_env(edit_fleet, tmp_path)
    first = start(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: _serve_sessions(edit_fleet, "he1") == 1, 60, "x's session on he1")
        (tmp_path / "two").mkdir()
        two = _machines(tmp_path / "two", _columns(one, c3="2"))
        outputs(nix_build(edit_fleet, tmp_path, nix_file(tmp_path, leaves(1)), "-j0", builders=two))
        wait_for(
            lambda: _serve_sessions(edit_fleet, "he1") == 1, 30, "the new line's session to end"
        )
        go.touch()
        _, err = first.communicate(timeout=120)
    finally:
        stop(first)
    assert first.returncode == 0, err
    assert _serve_sessions(edit_fleet, "he1") == 0  # not lingering: the slot is free


def test_a_host_key_pinned_anew_is_checked_by_the_live_coordinator(
    edit_fleet: Fleet, tmp_path: Path
) -> None:
    # The line's pin no longer matches he1's key (he1 reinstalled, or not he1 at all): no
    # build may go there. Before, the coordinator built there over the session it had opened
    # while the old pin held.
    line = member_line(edit_fleet, "he1")
    outputs(nix_build(edit_fleet, tmp_path, nix_file(tmp_path, leaves(1)), "-j0",
                      builders=_machines(tmp_path, line)))  # fmt: skip
    other = fleet_machine(edit_fleet, "he2").host_key_base64
    assert other is not None
    builders = _machines(tmp_path, _columns(line, c7=other), member_line(edit_fleet, "he2"))
    file = nix_file(tmp_path, f'[ (mk "pinned" "{SPEED} > $out" {{}}) ]\n', name="pin.nix")
    done = nix_build(edit_fleet, tmp_path, file, "-j0", builders=builders)
    [path] = outputs(done)
    assert edit_fleet.store_has("he2", path)
    assert not edit_fleet.store_has("he1", path)
    said = [line for line in done.stderr.splitlines() if "'he1'" in line]
    assert any("host key changed" in line.lower() for line in said), done.stderr


def _use(fleet: Fleet, tmp_path: Path, name: str) -> None:
    chosen = subprocess.run(
        [sys.executable, "-m", "offload", "use", name, "--builders", f"@{fleet.machines_file}"],
        env=hook_env(fleet, tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert chosen.returncode == 0, chosen.stderr


def test_derivations_waiting_for_a_slot_follow_an_offload_use_made_meanwhile(
    edit_fleet: Fleet, tmp_path: Path
) -> None:
    # Three derivations accepted for he1 (one slot), two waiting in the coordinator, when the
    # user says `offload use he2` (he1 is to go down for maintenance, say): the two build on
    # he2. Before, they waited on for he1 and built there.
    _use(edit_fleet, tmp_path, "he1")
    here = tmp_path / "started"
    here.mkdir()
    script = (
        f"{SPEED} > $out; /bin/touch {here}/$name; i=0; "
        f"while [ ! -e {tmp_path}/go ] && [ $i -lt 600 ]; do /bin/sleep 0.1; i=$((i+1)); done"
    )
    body = " ".join(f'(mk "w{i}" "{script}" {{}})' for i in range(3))
    proc = start_nix_build(edit_fleet, tmp_path, nix_file(tmp_path, f"[ {body} ]\n"), "-j0")
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(proc.stderr.readline, "")))  # type: ignore[union-attr]
    reader.start()
    try:
        accepted = "' on 'ssh://he1"
        wait_for(lambda: sum(accepted in line for line in seen) == 3, 60, f"3 accepts: {seen}")
        wait_for(lambda: any(here.iterdir()), 60, "the first build to start")
        _use(edit_fleet, tmp_path, "he2")
        (tmp_path / "go").touch()
        out, _ = proc.communicate(timeout=120)
    finally:
        stop(proc)
        reader.join()
    assert proc.returncode == 0, "".join(seen)
    where = sorted(Path(path).read_text().strip() for path in out.split())
    assert where == sorted([speed_of(edit_fleet, "he1"), *[speed_of(edit_fleet, "he2")] * 2])
