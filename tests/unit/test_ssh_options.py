"""ssh's keepalive read from the words offload gives ssh (``offload.transport.ssh_options``):
each case is checked against ssh's own reading of the same argv (``ssh -G`` prints the options
it would use and connects to nothing), NIX_SSHOPTS split as offload splits it."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest

from offload.transport.links import SshTransport
from offload.transport.shared import SharedSshTransport
from offload.transport.ssh import SshTarget, master_argv, serve_argv, ssh_argv, ssh_keepalive
from offload.transport.ssh_options import Keepalive, keepalive, o_lines


def _ssh_reads(argv: list[str]) -> tuple[int, int] | None:
    """ServerAliveInterval and ServerAliveCountMax as ssh reads ``argv`` (``ssh`` first);
    None when ssh refuses it."""
    done = subprocess.run(
        [argv[0], "-G", *argv[1:]], capture_output=True, text=True, check=False, timeout=30
    )
    if done.returncode != 0:
        return None
    said = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    return int(said["serveraliveinterval"]), int(said["serveralivecountmax"])


def _argv(sshopts: str) -> list[str]:
    return ssh_argv(SshTarget("127.0.0.1"), nix_sshopts=sshopts)


@pytest.mark.parametrize(
    ("sshopts", "expected"),
    [
        ("", (4, 2)),  # offload's own
        ("-o ServerAliveInterval=1", (1, 2)),
        ("-oServerAliveInterval=1 -oServerAliveCountMax=3", (1, 3)),
        ("-o serveralivecountmax=5", (4, 5)),  # keywords in any case
        ("-o SERVERALIVEINTERVAL=2 -o ServerAliveInterval=9", (2, 2)),  # the first value
        ("-o ServerAliveInterval=1m30s", (90, 2)),  # a time, as in ssh_config
        ("-o ServerAliveInterval=1m5", (65, 2)),  # a bare number last
        ("-o ServerAliveInterval=5S -o ServerAliveCountMax=+3", (5, 3)),
        ('-o ServerAliveInterval="7"', (7, 2)),  # the quotes are ssh's to take out
        ("-o ServerAliveInterval='07'", (7, 2)),
        ("-o =ServerAliveInterval=6", (6, 2)),
        ("-xo ServerAliveInterval=3", (3, 2)),  # flags bundled, as getopt reads them
        ("-qoServerAliveCountMax=0", (4, 0)),
        ("-p 22 -F /dev/null -o ServerAliveInterval=5", (5, 2)),  # others' arguments
        ("-o ServerAliveInterval=0", (0, 2)),  # keepalives off
        ("-o #ServerAliveInterval=1", (4, 2)),  # a comment
        ("-o ServerAliveCountMax=3 #", (4, 3)),
        ("-i -o ServerAliveInterval=8", (4, 2)),  # -i took "-o": a destination, not an option
        ("-o ControlPersist=no", (4, 2)),
    ],
)
def test_the_keepalive_is_the_one_ssh_uses(sshopts: str, expected: tuple[int, int]) -> None:
    argv = _argv(sshopts)
    assert _ssh_reads(argv) == expected
    assert keepalive(argv[1:]) == Keepalive(*expected)


@pytest.mark.parametrize(
    "words",
    [
        ["-o", "ServerAliveInterval 3"],  # blanks in one argument: ssh's argv, not NIX_SSHOPTS'
        ["-o", "ServerAliveInterval = 3", "-o", "ServerAliveCountMax\t1"],
        ["-o", ' ServerAliveInterval "2"  # a comment'],
    ],
)
def test_an_option_with_blanks_is_read_as_ssh_reads_it(words: list[str]) -> None:
    argv = ["ssh", *words, *Keepalive().options(), "--", "127.0.0.1"]
    said = _ssh_reads(argv)
    assert said is not None
    assert keepalive(argv[1:]) == Keepalive(*said)


@pytest.mark.parametrize(
    "sshopts",
    [
        "-o ServerAliveInterval=x",
        "-o ServerAliveInterval=-1",
        "-o ServerAliveInterval=1.5",
        "-o ServerAliveCountMax=x",
        "-o ServerAliveCountMax=-2",
        "-o ServerAliveInterval=",
        '-o ServerAliveInterval=1"',
        "-o ServerAliveInterval==1",
    ],
)
def test_a_value_ssh_refuses_counts_for_nothing(sshopts: str) -> None:
    # ssh exits before connecting (the builder is down with ssh's words): offload's own
    # values stand, though no connection is made with them.
    argv = _argv(sshopts)
    assert _ssh_reads(argv) is None
    assert keepalive(argv[1:]) == Keepalive()


def test_o_lines_follow_getopt() -> None:
    assert list(o_lines(["-o", "A=1", "-oB=2", "-vo", "C=3", "-Fo", "-o", "D=4"])) == [
        "A=1",
        "B=2",
        "C=3",
        "D=4",
    ]
    assert list(o_lines(["host", "-o", "A=1", "--", "-o", "B=2"])) == ["A=1"]
    assert list(o_lines(["-o"])) == []


def test_the_budget_is_the_least_silence_ssh_gives_up_after() -> None:
    assert (Keepalive().budget, Keepalive().gives_up) == (8, 12)
    assert (Keepalive(1, 3).budget, Keepalive(1, 3).gives_up) == (3, 4)
    # No unanswered ask allowed: ssh gives up at its first, which its whole-second clock
    # makes come between 1 and 2 s after the last word.
    assert (Keepalive(2, 0).budget, Keepalive(2, 0).gives_up) == (1, 2)
    assert Keepalive(1, 0).budget == 0
    assert Keepalive(0, 3).budget == math.inf
    assert Keepalive(0, 3).gives_up == math.inf


def test_a_transport_carries_the_keepalive_its_ssh_is_given(tmp_path: Path) -> None:
    # The master (offload build's, or the hook's shared one) and every session get the same
    # words: NIX_SSHOPTS', then offload's.
    target = SshTarget("b1")
    env = {"NIX_SSHOPTS": "-F /x/ssh_config -o ServerAliveInterval=1 -oServerAliveCountMax=3"}
    assert SshTransport(target, name="b1", env=env).keepalive == Keepalive(1, 3)
    shared = SharedSshTransport(target, name="b1", directory=tmp_path, env=env)
    assert shared.keepalive == Keepalive(1, 3)
    assert SshTransport(target, name="b1", env={}).keepalive == Keepalive()


def test_the_master_and_the_sessions_get_the_keepalive_offload_goes_by(tmp_path: Path) -> None:
    # The master sends the keepalives; ssh reads its argv as it reads the sessions'.
    target = SshTarget("127.0.0.1", port=2222, identity_file="/k/id", compress=True)
    sshopts = "-F /dev/null -oServerAliveCountMax=3 -o ServerAliveInterval=1"
    said = ssh_keepalive(target, sshopts)
    assert said == Keepalive(1, 3)
    control = tmp_path / "m"
    master = master_argv(target, control_path=control, nix_sshopts=sshopts, persist=120)
    session = serve_argv(target, control_path=control, nix_sshopts=sshopts)
    assert _ssh_reads(master) == _ssh_reads(session) == (1, 3)
