"""Transfers cut off by the run itself: an upload stopped by Ctrl-C, or by the failure of
another build (without ``-k`` the run stops the rest), leaves no half-written input on its
builder, or, on one whose key runs only the serve program, the build's log says it stays. So
does nix-build's Ctrl-C as offload-hook's coordinator sends a build's input.

A private fleet of two members, one of them restricted. The input is a large path built
locally first, so that the upload takes a while; the test waits until the path appears in the
member's store directory (Nix writes it in place) before it stops the run, and afterwards looks
at that directory.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from offload.fleet import Fleet, MemberSpec
from offload.transport.persist import control_dir
from tests.helpers.fleets import (
    member_line,
    member_processes,
    private_fleet_fixture,
    stop_masters,
)
from tests.helpers.hook_runs import hook_env, nix_build_argv
from tests.helpers.nix_files import nix_file, out_path, valid_locally
from tests.helpers.offload_run import events, offload, start_offload, wait_for
from tests.helpers.processes import children, start, stop

MEMBER, LOCKED = "cut", "cutr"  # the second one's key runs only the serve program

cut_fleet = private_fleet_fixture(
    [MemberSpec.parse(f"{MEMBER}:4:2"), MemberSpec.parse(f"{LOCKED}:4:2:serve")],
    "oflc",
    scope="module",
    doc="Two members with two slots (one restricted): each run builds on one of them.",
)

# 300 MB: long enough on loopback (about 2 s) to be seen half-written and stopped.
BODY = """rec {{
  huge = mk "huge" "/bin/head -c 300000000 /dev/zero > $out" {{}};
  use = mk "use" "/usr/bin/wc -c ${{huge}} > $out" {{}};
  big = mk "big" "/bin/head -c 300000000 /dev/zero > $out" {{}};
  fail = mk "fail" "while [ ! -e {go} ]; do /bin/sleep 0.05; done; exit 1" {{}};
}}
"""


def on_disk(fleet: Fleet, name: str, path: str) -> Path:
    """Where ``path`` would be in member ``name``'s store directory (valid or not)."""
    return fleet.member(name).root / "nix" / "store" / Path(path).name


def huge_input(tmp_path: Path) -> tuple[Path, str, Path]:
    """The test's Nix file with ``huge`` built here: (the file, huge's output, the file that
    makes ``fail`` fail)."""
    go = tmp_path / "go"
    file = nix_file(tmp_path, BODY.format(go=go))
    subprocess.run(
        ["nix-build", str(file), "-A", "huge", "--no-out-link"],
        capture_output=True, check=True, timeout=120,
    )  # fmt: skip
    return file, out_path(file, "huge"), go


def cut_off(
    fleet: Fleet, name: str, huge: str, proc: subprocess.Popen[str], stop_it: Callable[[], None]
) -> tuple[str, str]:
    """``proc`` stopped (``stop_it``) once ``huge`` is half there on member ``name``: its
    stdout and stderr."""
    try:

        def arriving() -> bool:
            assert proc.poll() is None, proc.communicate()
            return on_disk(fleet, name, huge).exists()

        wait_for(arriving, 60, f"{huge} to arrive on {name}")
        stop_it()
        out, err = proc.communicate(timeout=60)
    finally:
        stop(proc)
    assert not fleet.store_has(name, huge), "the upload was not cut off"
    assert "Traceback" not in err
    return out or "", err


def cut_upload(
    fleet: Fleet, tmp_path: Path, name: str, stopped_by: str, *args: str, scheme: str = "ssh"
) -> tuple[str, subprocess.Popen[str], str, str]:
    """A run building ``use`` on member ``name`` alone (listed as ``scheme``://), stopped
    (``stopped_by``) once its input ``huge`` is half there: (huge, the run, its stdout, its
    stderr)."""
    file, huge, go = huge_input(tmp_path)
    attrs = ["-A", "use"] + (["-A", "fail"] if stopped_by == "failure" else [])
    line = member_line(fleet, name).replace("ssh://", f"{scheme}://", 1)
    proc = start_offload(fleet, tmp_path, file, *attrs, "-j0", "--builders", line, *args)
    stop_it = (
        functools.partial(proc.send_signal, signal.SIGINT) if stopped_by == "ctrl-c" else go.touch
    )
    out, err = cut_off(fleet, name, huge, proc, stop_it)
    return huge, proc, out, err


@pytest.mark.parametrize(
    ("stopped_by", "scheme"), [("ctrl-c", "ssh"), ("failure", "ssh"), ("ctrl-c", "ssh-ng")]
)
def test_an_upload_the_run_stops_leaves_no_partial_input(
    cut_fleet: Fleet, tmp_path: Path, stopped_by: str, scheme: str
) -> None:
    # Over ssh-ng the builder's nix-daemon, blocked reading the NAR, took no SIGTERM: the run
    # waited out the kill's 5 s grace and gave up deleting the partial input after 3 s.
    huge, proc, _, err = cut_upload(cut_fleet, tmp_path, MEMBER, stopped_by, scheme=scheme)
    assert proc.returncode == (130 if stopped_by == "ctrl-c" else 100), err
    assert "partial inputs" not in err, err
    assert not on_disk(cut_fleet, MEMBER, huge).exists(), f"{huge}: left half-written"


@pytest.mark.usefixtures("coordinators_stopped")
def test_nix_build_with_offload_hook_stopped_mid_upload_leaves_no_partial_input(
    cut_fleet: Fleet, tmp_path: Path
) -> None:
    # nix-build's Ctrl-C while the coordinator sends the build's input: the coordinator stops
    # the session there and deletes the half-written input, as offload build does.
    file, huge, _ = huge_input(tmp_path)
    argv = nix_build_argv(file, member_line(cut_fleet, MEMBER), "-A", "use", "-j0")
    env = hook_env(cut_fleet, tmp_path)
    proc = start(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    cut_off(cut_fleet, MEMBER, huge, proc, functools.partial(os.kill, proc.pid, signal.SIGINT))
    assert proc.returncode != 0
    left = on_disk(cut_fleet, MEMBER, huge)
    wait_for(lambda: not left.exists(), 10, f"{left} to be deleted")


def test_a_builder_that_cannot_delete_it_is_said_to_keep_it(
    cut_fleet: Fleet, tmp_path: Path
) -> None:
    huge, proc, out, err = cut_upload(cut_fleet, tmp_path, LOCKED, "ctrl-c", "--json", "-L")
    assert proc.returncode == 130, err
    said = [e["line"] for e in events(out) if e["event"] == "job_log" and "cut off" in e["line"]]
    assert len(said) == 1, out
    assert said[0].startswith(f"offload: the copy of its inputs to {LOCKED} was cut off; ")
    assert "its partial inputs stay there" in said[0]
    assert "runs only `nix-store --serve --write`" in said[0]
    assert "for p; do" not in said[0]  # the deletion script, its lines run together
    assert on_disk(cut_fleet, LOCKED, huge).exists()  # what Nix's GC there will take
    # That line is the stopped copy's, said after its end: its log is a stopped one's, not a
    # new attempt's that `offload log` would take over any copy that built.
    logs = sorted(p.name for p in (tmp_path / "state" / "logs").glob("*-use.drv@*"))
    assert len(logs) == 1, logs
    assert logs[0].endswith(".stopped.log"), logs
    kept = (tmp_path / "state" / "logs" / logs[0]).read_text()
    assert "was cut off" in kept, kept
    # Nothing of this run is left running there (but the connection kept for the next run).
    stop_masters(control_dir(tmp_path / "state"))
    member = cut_fleet.member(LOCKED)

    def nothing_left() -> bool:
        return [pid for pid, _ in member_processes(member) if pid != member.pid] == []

    wait_for(nothing_left, 15, f"the session on {LOCKED} to end")


def received_here(pid: int) -> int:
    """Bytes the local ``nix-store`` sessions of run ``pid`` read so far (Nix holds a NAR it
    imports in memory: the path appears only once it all came)."""
    total = 0
    for child, cmdline in children(pid):
        if cmdline.startswith("nix-store"):
            with contextlib.suppress(OSError, StopIteration):
                io = Path(f"/proc/{child}/io").read_text().splitlines()
                total += int(next(x for x in io if x.startswith("rchar:")).split()[1])
    return total


@pytest.mark.parametrize(
    ("sig", "scheme"),
    [(signal.SIGINT, "ssh"), (signal.SIGTERM, "ssh"), (signal.SIGTERM, "ssh-ng")],
)
def test_a_fetch_home_the_run_stops_ends_at_once_and_quietly(
    cut_fleet: Fleet, tmp_path: Path, sig: signal.Signals, scheme: str
) -> None:
    # Over ssh-ng it took 5 s: the builder's nix-daemon, blocked writing the NAR to us, took
    # no SIGTERM, and the session was stopped here only after the remote kill's grace.
    file = nix_file(tmp_path, BODY.format(go=tmp_path / "go"))
    big = out_path(file, "big")
    line = member_line(cut_fleet, MEMBER).replace("ssh://", f"{scheme}://", 1)
    proc = start_offload(cut_fleet, tmp_path, file, "-A", "big", "-j0", "--builders", line)
    try:

        def arriving() -> bool:
            assert proc.poll() is None, proc.communicate()
            return received_here(proc.pid) > 50_000_000

        wait_for(arriving, 60, f"{big} to be on its way here")
        proc.send_signal(sig)
        stopped = time.monotonic()
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - stopped
    finally:
        stop(proc)
    assert proc.returncode != 0, err
    assert not valid_locally(big), "the fetch was not cut off"
    assert "Exception ignored" not in err
    assert "Traceback" not in err
    # Closing its sessions politely took over 8 s; over ssh-ng the remote kill's 5 s grace ran
    # out (now a second's head start for the kill, then the daemon's exit).
    assert took < 4.5, err
    # The connection kept for the next run serves it.
    again = nix_file(tmp_path, 'mk "again" "echo again > $out" {}', name="again.nix")
    done = offload(cut_fleet, tmp_path, again, "-j0", "--builders", line, "--no-out-link")
    assert done.returncode == 0, done.stderr


def test_a_build_stopped_where_its_outputs_cannot_be_deleted_says_they_stay(
    cut_fleet: Fleet, tmp_path: Path
) -> None:
    # The run's Ctrl-C stopped it mid-build: its partial output stayed on the restricted
    # builder without a word (tester: 119 MB of a 400 MB output), where a cut input is said.
    body = '{ part = mk "part" "/bin/mkdir $out; exec /bin/sleep 60" {}; }'
    file = nix_file(tmp_path, body, name="p.nix")
    part = out_path(file, "part")
    line = member_line(cut_fleet, LOCKED)
    argv = ["-A", "part", "-j0", "--builders", line, "--json", "-L"]
    proc = start_offload(cut_fleet, tmp_path, file, *argv)
    try:

        def begun() -> bool:
            assert proc.poll() is None, proc.communicate()
            return on_disk(cut_fleet, LOCKED, part).exists()

        wait_for(begun, 60, f"{part} to be begun on {LOCKED}")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        stop(proc)
    assert proc.returncode == 130, err
    said = [e["line"] for e in events(out) if e["event"] == "job_log" and "offload:" in e["line"]]
    assert len(said) == 1, out
    stays = f"offload: stopped on {LOCKED}; its partial outputs stay there: builder '{LOCKED}' "
    assert said[0].startswith(stays), said
    assert said[0].endswith(
        "`nix-store --serve --write` for this key: offload cannot run its own commands there"
    )
    assert on_disk(cut_fleet, LOCKED, part).exists()  # what Nix's GC there will take
