"""Stopping a fleet member (``offload.fleet.namespace.stop_member``) stops what is its own and
nothing of anyone else's, with real mount namespaces and a real chroot.

A member's processes are those that see its directory at /nix, and those among them whose root
cannot be read: an sshd's unprivileged child, chrooted to an empty directory, in a session of
its own below the per-connection process. A namespace's id is used again as soon as it is free,
so a live process whose root cannot be read, in a namespace whose id the member once had, is a
stranger's: the stop of a member killed in a test once killed another fleet's sshd child that
way (the fleet's namespace had been used again for it), and that fleet's ssh login failed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload.fleet.namespace import mnt_ns, stop_member
from offload.fleet.records import MemberRecord
from offload.fleet.spec import MemberSpec
from offload.procfs import proc_stat, running

# A member's shape: this process stands for its sshd; a child in a session of its own for the
# per-connection sshd; and its child, chrooted to an empty directory, for the unprivileged one.
# Prints "<per-connection pid> <chrooted pid>" once the chroot is done.
MEMBER = """
import os, sys, time
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.chroot(sys.argv[1])
        os.write(w, f"{os.getppid()} {os.getpid()}\\n".encode())
    time.sleep(120)
    os._exit(0)
sys.stdout.write(os.read(r, 100).decode())
sys.stdout.flush()
time.sleep(120)
"""

# A stranger in a namespace of its own, chrooted: prints its pid once the chroot is done.
STRANGER = """
import os, sys, time
os.chroot(sys.argv[1])
print(os.getpid(), flush=True)
time.sleep(120)
"""


@pytest.fixture
def pids() -> Iterator[list[int]]:
    """Pids to be killed after the test, whatever it found."""
    started: list[int] = []
    yield started
    for pid in started:
        if running(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_members_chrooted_child_is_stopped_with_it(tmp_path: Path, pids: list[int]) -> None:
    (tmp_path / "m" / "nix").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    script = 'mount --bind "$1" /nix && exec "$2" -c "$3" "$4"'
    argv = ["unshare", "-m", "sh", "-c", script, "sh", str(tmp_path / "m" / "nix")]
    argv += [sys.executable, MEMBER, str(tmp_path / "empty")]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, start_new_session=True) as sshd:
        pids.append(sshd.pid)
        assert sshd.stdout is not None
        connection, chrooted = map(int, sshd.stdout.readline().split())
        pids.extend([connection, chrooted])
        ns, stat = mnt_ns(sshd.pid), proc_stat(sshd.pid)
        assert ns is not None
        assert ns != mnt_ns(os.getpid())
        assert stat is not None
        assert mnt_ns(chrooted) == ns
        record = MemberRecord(MemberSpec("m"), 0, sshd.pid, stat[1], ns)
        stop_member(tmp_path, record)
        assert not running(sshd.pid)  # (stop_member reaps it: it waits for its own children)
    assert not running(connection)
    assert not running(chrooted)


def test_a_stranger_chrooted_in_a_namespace_once_the_members_is_left_alone(
    tmp_path: Path, pids: list[int]
) -> None:
    (tmp_path / "gone" / "nix").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    argv = ["unshare", "-m", sys.executable, "-c", STRANGER, str(tmp_path / "empty")]
    with subprocess.Popen(argv, stdout=subprocess.PIPE) as stranger:
        pids.append(stranger.pid)
        assert stranger.stdout is not None
        assert int(stranger.stdout.readline()) == stranger.pid
        ns = mnt_ns(stranger.pid)
        assert ns is not None
        assert ns != mnt_ns(os.getpid())
        # The member "gone" had this namespace's id; its sshd (start time 0) is no more.
        record = MemberRecord(MemberSpec("gone"), 0, stranger.pid, 0, ns)
        stop_member(tmp_path, record)
        assert running(stranger.pid)
        stranger.kill()
