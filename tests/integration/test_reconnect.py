"""A builder whose connection is lost mid-run while the builder itself is fine: reconnected.

The run's ssh master to its one builder (``-j 0``) is killed while a build runs there, as a
persistent master ended by hand, or a connection a network dropped, would end: ssh says nothing
that tells this from a builder gone away. The run reconnects at once (a new master), the lost
build goes again on the same builder, and the run says both the fall and the reconnect; before,
the builder was backed off and the run stranded with nothing left to build on. A real member
(sshd, Nix) answers; the master is found by its control socket in the state directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from offload.fleet import Fleet, MemberSpec
from offload.transport.persist import control_dir
from tests.helpers.fleets import member_line, persistent_masters, private_fleet_fixture, speed_of
from tests.helpers.hook_runs import hook_env, nix_build_argv
from tests.helpers.nix_files import SPEED, nix_file, out_path
from tests.helpers.offload_run import events, start_offload, wait_for
from tests.helpers.processes import start, stop

T = TypeVar("T")

reconnect_fleet = private_fleet_fixture(
    [MemberSpec.parse("again:4:1")], "ofr", doc="One member, whose connection the test cuts."
)
restricted_fleet = private_fleet_fixture(
    [MemberSpec.parse("kept:4:2:serve")], "ofrk", doc="One whose key runs only the serve program."
)


def test_a_killed_ssh_master_is_reconnected_and_the_build_goes_on_there(
    reconnect_fleet: Fleet, tmp_path: Path
) -> None:
    with _marks() as marks:
        script = f"/bin/mktemp {marks}/try.XXXXXX > /dev/null; /bin/sleep 2; {SPEED} > $out"
        file = nix_file(tmp_path, f'mk "again" "{script}" {{}}\n')
        line = member_line(reconnect_fleet, "again")
        proc = start_offload(reconnect_fleet, tmp_path, file, "-j0", "--builders", line, "--json")
        master = _kill_master_mid_build(proc, marks, tmp_path)
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            stop(proc)
    assert proc.returncode == 0, err
    said = events(out)
    ends = [(e["machine"], e["status"]) for e in said if e["event"] == "job_finished"]
    assert ends == [("again", "lost"), ("again", "built")], out
    states = [(e["machine"], e["state"], e["message"]) for e in said if e["event"] == "machine"]
    assert [(m, s) for m, s, _ in states] == [("again", "down"), ("again", "up")], states
    assert states[1][2] == "reconnected after its connection was lost"
    assert "warning: builder 'again' is down: " in err  # the fall is said on stderr too
    assert "again" not in _backoff(tmp_path)  # no backoff kept: the next run uses it at once
    (now,) = persistent_masters(control_dir(tmp_path / "state"))  # the new one, kept
    assert now != master


def test_a_builder_whose_key_runs_only_the_serve_program_is_reconnected_for_real(
    restricted_fleet: Fleet, tmp_path: Path
) -> None:
    # Its builds use pooled sessions (no slot lock there), and a reconnect's probe borrowed one
    # idle since before the fall, whose ssh, not reaped yet, looked alive: it "answered", and
    # the builder was backed off for 3 minutes once builds went back (tester). That race is
    # shown at the link (test_links: a fresh session is a new one); here, such a builder cut
    # off on its side (its sshd's connections killed) is reconnected, once, and builds again.
    with _marks() as marks:
        # b ends first, its session idle in the pool when a's connection is cut.
        slow = f"/bin/sleep 1; /bin/mktemp {marks}/a.XXXXXX > /dev/null; /bin/sleep 2"
        body = (
            f'{{ a = mk "a" "{slow}; {SPEED} > $out" {{}}; b = mk "b" "{SPEED} > $out" {{}}; }}\n'
        )
        file = nix_file(tmp_path, body)
        line = member_line(restricted_fleet, "kept")
        argv = ["-A", "a", "-A", "b", "-j0", "--builders", line, "--json"]
        proc = start_offload(restricted_fleet, tmp_path, file, *argv)
        _cut_on_the_builder_mid_build(proc, marks, restricted_fleet.member("kept").pid)
        try:
            out, err = proc.communicate(timeout=90)
        finally:
            stop(proc)
    assert proc.returncode == 0, err
    said = events(out)
    states = [(e["state"], e["message"]) for e in said if e["event"] == "machine"]
    assert [s for s, _ in states if s in {"down", "up"}] == ["down", "up"], states
    ends = [(e["drv_path"][44:], e["status"]) for e in said if e["event"] == "job_finished"]
    assert ends == [("b.drv", "built"), ("a.drv", "lost"), ("a.drv", "built")], ends
    assert "kept" not in _backoff(tmp_path)


@pytest.mark.usefixtures("coordinators_stopped")
def test_offload_hooks_coordinator_reconnects_a_builder_whose_master_was_killed(
    reconnect_fleet: Fleet, tmp_path: Path
) -> None:
    # nix-build with offload-hook: a is lost on the builder, which the coordinator reconnects,
    # and a is built there again, then b. Before, a accepted could go to no other builder, and
    # the nix-build failed ("no builder is left to build ...").
    with _marks() as marks:
        first = f"/bin/mktemp {marks}/a.XXXXXX > /dev/null; /bin/sleep 2; {SPEED} > $out"
        body = (
            f'rec {{ a = mk "a" "{first}" {{}};\n'
            f'  b = mk "b" "/bin/cat ${{a}} > /dev/null; {SPEED} > $out" {{}}; }}\n'
        )
        file = nix_file(tmp_path, body)
        argv = nix_build_argv(file, member_line(reconnect_fleet, "again"), "-A", "b", "-j0")
        proc = start(
            argv, env=hook_env(reconnect_fleet, tmp_path), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        _kill_master_mid_build(proc, marks, tmp_path)
        try:
            out, err = proc.communicate(timeout=120)
        finally:
            stop(proc)
        tries = len(list(marks.iterdir()))
    assert proc.returncode == 0, err
    assert tries == 2  # a, lost, then built again
    speed = speed_of(reconnect_fleet, "again")
    assert Path(out_path(file, "a")).read_text().strip() == speed  # there
    assert Path(out.strip()).read_text().strip() == speed  # b, there
    assert "offload-hook: builder 'again' failed: again closed the connection" in err  # said
    # And that it answered again: told only it failed and was backed off, the user saw it
    # build there again with no word why, the reconnect in the coordinator's log alone.
    assert "offload-hook: builder 'again' answered again after its connection was lost" in err
    assert "again" not in _backoff(tmp_path)
    log = (tmp_path / "state" / "hook-coordinator.log").read_text()
    assert "builder 'again' reconnected after its connection was lost" in log


@contextlib.contextmanager
def _marks() -> Iterator[Path]:
    """A directory the builds leave a file in as they start (nixbld users: theirs to write)."""
    marks = Path(tempfile.mkdtemp(prefix="ofl-reconnect-", dir="/tmp"))
    marks.chmod(0o777)
    try:
        yield marks
    finally:
        shutil.rmtree(marks, ignore_errors=True)


def _mid_build(proc: subprocess.Popen[str], marks: Path, cut: Callable[[], T]) -> T:
    """Once a build has started on the builder, ``cut`` done (what it returns); ``proc``
    stopped if anything goes wrong."""
    try:

        def building() -> bool:
            assert proc.poll() is None, proc.communicate()
            return any(marks.iterdir())

        wait_for(building, 60, "a build to start on the builder")
        return cut()
    except BaseException:
        stop(proc)
        raise


def _kill_master_mid_build(proc: subprocess.Popen[str], marks: Path, tmp_path: Path) -> int:
    """Once a build has started on the builder, the run's ssh master to it killed (its pid)."""

    def kill() -> int:
        (master,) = persistent_masters(control_dir(tmp_path / "state"))
        os.kill(master, signal.SIGTERM)
        return master

    return _mid_build(proc, marks, kill)


def _cut_on_the_builder_mid_build(proc: subprocess.Popen[str], marks: Path, sshd: int) -> None:
    """Once a build has started on the builder, every connection to it cut there (the
    member's sshd's children killed, as a network drop or sshd's restart would end them)."""

    def cut() -> None:
        done = subprocess.run(
            ["pgrep", "-P", str(sshd)], capture_output=True, text=True, check=False
        )
        for pid in done.stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)

    _mid_build(proc, marks, cut)


def _backoff(tmp_path: Path) -> dict[str, object]:
    """The builders backed off in the test's state directory."""
    backoff = tmp_path / "state" / "backoff.json"
    kept = json.loads(backoff.read_text()) if backoff.exists() else {}
    return dict(kept.get("machines", kept))
