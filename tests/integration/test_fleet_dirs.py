"""The fleet's directory as a user's file: whose it is, one up or down at a time, what a killed
up leaves, and what it may take over. Real sshd members in mount namespaces, started and
stopped by each test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from offload.errors import FleetError
from offload.fleet import MemberSpec, fleet_down, fleet_status, fleet_up, open_fleet
from offload.procfs import running


def _sshds_of(target: object) -> list[int]:
    """The running sshds whose command line names ``target`` (a path, or a file in it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or not running(int(entry.name)):
            continue
        try:
            line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # gone meanwhile
            continue
        if "sshd" in line and str(target) in line:
            found.append(int(entry.name))
    return found


_KILLED_SCRIPT = """
import os, pathlib, signal, sys
import offload.fleet as f
real = f.sshd._wait_listening
def killed_while_b_starts(record, log):
    if record.spec.name == "b":
        os.kill(os.getpid(), signal.SIGKILL)  # no clean-up of ours runs
    real(record, log)
f.sshd._wait_listening = killed_while_b_starts
f.fleet_up(pathlib.Path(sys.argv[1]), [f.MemberSpec("a"), f.MemberSpec("b")])
"""


def test_down_stops_what_an_up_killed_meanwhile_had_started(tmp_path):
    # Each member was recorded once it listened: a SIGKILL while one started (up to 10 s)
    # left an sshd that `fleet down` did not know of.
    target = tmp_path / "f"
    try:
        killed = subprocess.run(
            [sys.executable, "-c", _KILLED_SCRIPT, str(target)], timeout=120, check=False
        )
        assert killed.returncode == -signal.SIGKILL
        assert {s.member.name for s in fleet_status(target)} == {"a", "b"}
        fleet_down(target)
        assert _sshds_of(target) == []
    finally:
        fleet_down(target, purge=True)


def test_an_up_after_one_killed_meanwhile_starts_that_member_again(tmp_path):
    # b, recorded as spawned, had no namespace: the next up kept it as it was, and a down
    # could not sweep its sessions. It is stopped (its namespace read then) and started anew.
    target = tmp_path / "f"
    try:
        subprocess.run(
            [sys.executable, "-c", _KILLED_SCRIPT, str(target)], timeout=120, check=False
        )
        fleet = fleet_up(target, [MemberSpec("a"), MemberSpec("b")])
        assert fleet.member("b").mnt_ns
        assert len(_sshds_of(f"{target}/b/sshd_config")) == 1
    finally:
        fleet_down(target, purge=True)


def test_a_fleet_directory_of_another_user_is_refused(tmp_path):
    # Its owner could change the ssh_config ssh reads as root, or the pids `down` stops.
    target = tmp_path / "theirs"
    target.mkdir()
    os.chown(target, 65534, 65534)
    for call in (
        lambda: fleet_up(target, [MemberSpec("a")]),
        lambda: fleet_down(target, purge=True),
        lambda: open_fleet(target),
    ):
        with pytest.raises(FleetError, match="belongs to uid 65534, not to this user"):
            call()
    assert list(target.iterdir()) == []  # nothing made in it
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(FleetError, match="belongs to uid 65534"):
        fleet_up(link, [MemberSpec("a")])


def test_down_purge_through_a_link_removes_the_directory_and_the_link(tmp_path):
    # It removed the files, then failed on the link ("Not a directory"), and kept it.
    real, link = tmp_path / "real", tmp_path / "link"
    real.mkdir()
    link.symlink_to(real)
    try:
        fleet_up(link, [MemberSpec("a")])
        fleet_down(link, purge=True)
        assert not real.exists()
        assert not link.is_symlink()
    finally:
        fleet_down(real, purge=True)


def test_a_member_named_directory_with_files_of_its_own_is_not_taken(tmp_path):
    # "fast" of notes was made 0700 as a member's, and `down --purge` removed the notes.
    target = tmp_path / "data"
    (target / "fast").mkdir(parents=True)
    (target / "fast" / "notes.txt").write_text("mine\n")
    with pytest.raises(FleetError, match="holds files of its own"):
        fleet_up(target, [MemberSpec("fast")])
    with pytest.raises(FleetError, match="does not look like a fleet directory"):
        fleet_down(target, purge=True)
    assert (target / "fast" / "notes.txt").read_text() == "mine\n"
    file = tmp_path / "afile"
    file.write_text("")
    for call in (lambda: fleet_up(file, [MemberSpec("a")]), lambda: fleet_down(file)):
        with pytest.raises(FleetError, match=f"cannot use {file} as the fleet directory"):
            call()


def test_two_ups_at_once_start_each_member_once(tmp_path):
    # Unlocked, both started every member: two sshds served one store, one of them unrecorded.
    target = tmp_path / "f"
    argv = [sys.executable, "-m", "offload", "fleet", "up", "--dir", str(target), "--member", "a"]
    try:
        ups = [subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)]
        ups.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        for up in ups:
            _, err = up.communicate(timeout=120)
            assert up.returncode == 0, err
        assert len(_sshds_of(f"{target}/a/sshd_config")) == 1
        assert [s.member.name for s in fleet_status(target)] == ["a"]
    finally:
        fleet_down(target, purge=True)
