"""The builder's Nix that cannot reach its daemon's socket, told from ssh refusing the key: both
say "Permission denied" (recorded words: Nix 2.8 and later, OpenSSH 9.2), and each has its own
fix, in doctor's rows and in what ``offload build`` says of the builder."""

from __future__ import annotations

import pytest

from offload.build.faults import explain
from offload.config.machines import Machine, parse_machines
from offload.doctor.facts import nix_check, serve_check
from offload.doctor.model import Verdict
from offload.doctor.reach import ssh_check
from offload.transport.daemon_socket import DaemonTrouble, daemon_trouble
from offload.transport.links.ssh_errors import ssh_hint
from offload.transport.ssh_keys import refused_by_ssh

SOCKET = "/nix/var/nix/daemon-socket/socket"
STAT_28 = f"error: getting status of {SOCKET}: Permission denied"
STAT_NEW = f"error: getting status of '{SOCKET}': Permission denied"
CONNECT = f"error: cannot connect to socket at '{SOCKET}': Permission denied"
REFUSED = f"error: cannot connect to socket at '{SOCKET}': Connection refused"
DENIED = "root@127.0.0.1: Permission denied (publickey)."


def machine(uri: str = "ssh://builder@a") -> Machine:
    found, _ = parse_machines(f"{uri} x86_64-linux\n", source="/etc/nix/machines", system="x")
    return found[0]


@pytest.mark.parametrize("said", [STAT_28, STAT_NEW, CONNECT])
def test_nix_s_words_for_a_socket_it_may_not_reach_are_found_anywhere(said: str) -> None:
    for text in (said, f"Warning: x\n{said}\r\n", f"cannot connect to builder 'a' (a): {said}"):
        trouble = daemon_trouble(text)
        assert trouble == DaemonTrouble(SOCKET, "Permission denied", said)
    # A session's error repeats the words after its own ("...: denied; stderr: error: ...").
    nested = f"a: cannot start x: a: {STAT_28.removeprefix('error: ')}; stderr: {STAT_28}"
    assert daemon_trouble(nested) == DaemonTrouble(SOCKET, "Permission denied", STAT_28)


def test_other_words_are_no_daemon_trouble() -> None:
    assert daemon_trouble(DENIED) is None
    assert daemon_trouble("error: getting status of /nix/store/x-a: Permission denied") is None
    assert daemon_trouble("bash: /bin/nix-store: Permission denied") is None


def test_the_fix_names_the_user_and_the_socket_s_group_or_starting_the_daemon() -> None:
    trouble = daemon_trouble(STAT_28)
    assert trouble is not None
    assert trouble.detail == f"the builder's Nix cannot reach its daemon: {STAT_28}"
    assert trouble.fix("nixremote") == (
        "let nixremote reach the builder's nix-daemon: add it to the group that owns "
        "/nix/var/nix/daemon-socket (`ls -ld /nix/var/nix/daemon-socket` there; Debian's "
        "nix-bin: `adduser nixremote nix-users`)"
    )
    assert "`adduser USER nix-users`" in trouble.fix(None)
    down = daemon_trouble(REFUSED)
    assert down is not None
    assert "start the builder's nix-daemon" in down.fix("u")


def test_only_ssh_s_own_words_are_a_refused_key() -> None:
    assert refused_by_ssh(DENIED)
    assert refused_by_ssh("u@h: Permission denied (publickey,password,keyboard-interactive).")
    assert not refused_by_ssh(STAT_28)
    assert not refused_by_ssh('Load key "/k": Permission denied')


def test_a_forced_command_stopping_on_its_daemon_is_a_login_that_worked() -> None:
    # sshd took the key; the serve program it runs for the key (not `true`) stopped at once.
    check = ssh_check(1, STAT_28 + "\n", key="/k", pinned=True, destination="u@a", seconds=0.1)
    assert check.verdict == Verdict.OK
    assert check.detail.startswith("logged in as u@a")
    refused = ssh_check(255, DENIED, key="/k", pinned=True, destination="u@a", seconds=0.1)
    assert refused.verdict == Verdict.FAIL
    assert "does not accept /k" in refused.detail


def test_nix_and_the_session_say_the_daemon_not_a_missing_nix() -> None:
    nix = nix_check(1, "", STAT_28 + "\n", "nix-store", "nixremote")
    assert (nix.verdict, nix.detail) == (
        Verdict.FAIL,
        f"the builder's Nix cannot reach its daemon: {STAT_28}",
    )
    assert nix.fix is not None
    assert "adduser nixremote nix-users" in nix.fix
    assert "install Nix" not in nix.fix
    serve = serve_check(None, None, f"a: cannot start: {CONNECT}", user="nixremote")
    assert serve.verdict == Verdict.FAIL
    assert serve.detail == f"the builder's Nix cannot reach its daemon: {CONNECT}"
    assert serve.fix is not None
    assert "install Nix" not in serve.fix


def test_offload_build_says_the_daemon_not_the_key() -> None:
    error = f"cannot connect to builder 'a' (builder@a): {STAT_28}"
    why = explain(machine(), error)
    assert why.startswith(f"the builder's Nix cannot reach its daemon: {STAT_28}; ")
    assert "adduser builder nix-users" in why
    assert "refused" not in why
    assert "add it to the group that owns /nix/var/nix/daemon-socket" in ssh_hint(STAT_28)
    # ssh's own refusal is still the key's.
    refused = explain(machine(), f"cannot connect to builder 'a' (builder@a): {DENIED}")
    assert refused.startswith("the builder refused the ssh keys offered")
