"""A builder whose key runs the other scheme's program: Nix says only "protocol mismatch" to
the hello, and doctor and ``offload build`` say what it is and the fix."""

from __future__ import annotations

import pytest

from offload.build.faults import explain
from offload.config.machines import parse_machines
from offload.transport.dialect import mismatch_fix


def test_the_scheme_to_write_or_the_command_to_force_is_the_fix() -> None:
    what, fix = mismatch_fix("ssh-ng", "m:2", speaks_other=True)
    assert what == (
        "the builder's key runs another program than ssh-ng:// speaks to: Nix there said "
        "'protocol mismatch' to its hello; it answers ssh://'s (`nix-store --serve --write`)"
    )
    assert fix == (
        "write ssh:// in m:2 (a key restricted to `nix-store --serve --write` speaks only "
        "that), or change the key's command= (or sshd's ForceCommand) on the builder to "
        "`nix-daemon --stdio`"
    )
    what, fix = mismatch_fix("ssh", "m:1")
    assert "it answers" not in what  # not asked
    assert fix.startswith("write ssh-ng:// in m:1 (a key restricted to `nix-daemon --stdio`")
    what, fix = mismatch_fix("ssh", "m:1", speaks_other=False)
    assert what.endswith("hung up), and to ssh-ng://'s too")
    assert fix.startswith("check the key's command= (or sshd's ForceCommand) on the builder")


def test_offload_build_says_it_where_ssh_said_only_protocol_mismatch() -> None:
    found, _ = parse_machines("ssh://b x86_64-linux\n", source="m", system="x")
    why = explain(found[0], "cannot connect to builder 'b' (b): error: protocol mismatch")
    assert why.startswith("the builder's key runs another program than ssh:// speaks to")
    assert "write ssh-ng:// in m:1" in why


def test_it_is_said_where_a_session_over_a_kept_connection_met_it() -> None:
    # The hook's first failure, and a run's over a master kept from an earlier one, is the
    # session's: the bare "protocol mismatch" was said with no fix (ssh-ng tester).
    found, _ = parse_machines("ssh://b x86_64-linux\n", source="m", system="x")
    said = "cannot open a session on builder 'b' (b): error: protocol mismatch | (the session ended"
    why = explain(found[0], said + " before it answered)")
    assert "write ssh-ng:// in m:1" in why


def test_a_daemon_that_only_relays_hung_up_on_serve_s_hello() -> None:
    # A key restricted to nix-daemon --stdio for a user that is not root relays to the
    # builder's daemon, which hangs up on serve's hello: "unexpected EOF from daemon socket",
    # said with "try ssh -v" (ssh-ng tester). From an ssh-ng:// line it is no mismatch.
    found, _ = parse_machines(
        "ssh://b x86_64-linux\nssh-ng://c x86_64-linux\n", source="m", system="x"
    )
    eof = "cannot connect to builder '{0}' ({0}): error: unexpected EOF from daemon socket"
    assert "write ssh-ng:// in m:1" in explain(found[0], eof.format("b"))
    assert "ssh:// in m:2" not in explain(found[1], eof.format("c"))


def test_a_forced_command_that_is_not_there_is_said_as_the_keys() -> None:
    # command="nix-daemon-x --stdio": the login worked, and only bash's words were said, with
    # no fix (ssh-ng tester).
    found, _ = parse_machines("ssh-ng://b x86_64-linux\n", source="m", system="x")
    said = "cannot open a session on builder 'b' (b): bash: line 1: nix-daemon-x: command not found"
    why = explain(found[0], said + " | (the session ended before it answered)")
    assert why.startswith("the program the builder runs for this key is not there (")
    assert "check the key's command= in authorized_keys" in why


def test_a_remote_program_that_is_not_there_is_said_as_the_lines() -> None:
    # ?remote-program=nix-daemon-x: the fix was "name the program with ?remote-program=".
    found, _ = parse_machines(
        "ssh-ng://b?remote-program=nix-daemon-x x86_64-linux\n", source="m", system="x"
    )
    said = (
        "cannot connect to builder 'b' (b): `nix-daemon --stdio` is not on the builder's PATH: "
        "sh: 1: exec: nix-daemon-x: not found"
    )
    why = explain(found[0], said)
    assert why.startswith("remote-program=nix-daemon-x in m:1 names a program the builder has")
    assert "(sh: 1: exec: nix-daemon-x: not found)" in why


def test_only_the_shells_own_last_line_is_read_as_a_forced_command_not_there() -> None:
    # A review: Nix's own errors, a ProxyCommand not found here, sshd's missing home or login
    # shell beside a mismatch, were all said as "check the key's command=".
    found, _ = parse_machines("ssh://b x86_64-linux\n", source="m", system="x")
    opening = "cannot connect to builder 'b' (b): "
    for error in (
        "error: file '/etc/nix/extra.conf' included from '/etc/nix/nix.conf' not found",
        "error: opening file '/x': No such file or directory",
        (
            "/bin/bash: line 1: exec: no-such-proxy: not found | kex_exchange_identification: "
            "Connection closed by remote host"
        ),
        (
            "Could not chdir to home directory /home/x: No such file or directory | error: "
            "protocol mismatch"
        ),
        "/usr/bin/zsh: No such file or directory",
    ):
        assert "command=" not in explain(found[0], opening + error).split("; ")[0], error
    mismatch = opening + "Could not chdir to home directory /home/x: No such file or directory"
    assert "write ssh-ng://" in explain(found[0], mismatch + " | error: protocol mismatch")
    forced = opening + "bash: line 1: nix-daemon-x: command not found"
    why = explain(found[0], forced)
    assert why.startswith(
        "the program the builder runs for this key is not there "
        "(bash: line 1: nix-daemon-x: command not found); "
    )


@pytest.mark.parametrize(
    ("said", "forced"),
    [
        ("bash: line 1: nix-daemon-x: command not found", True),
        ("dash: 1: nix-daemon-x: not found", True),
        ("ash: nix-daemon-x: not found", True),  # Alpine's root (a third review)
        ("zsh:1: command not found: nix-daemon-x", True),  # macOS's login shell
        ("\x1b[31mbash: line 1: nix-daemon-x: command not found\x1b[0m", True),
        # ssh -q with a ProxyCommand not found here: by its path, and exit 255.
        ("/bin/bash: line 1: exec: no-such-proxy: not found", False),
        ("/usr/bin/zsh: No such file or directory", False),  # sshd: no login shell
        ("error: opening file '/x': No such file or directory", False),
    ],
)
def test_a_forced_command_not_there_is_told_from_the_shell_that_ran_it(
    said: str, forced: bool
) -> None:
    found, _ = parse_machines("ssh://b x86_64-linux\n", source="m", system="x")
    why = explain(found[0], f"cannot connect to builder 'b' (b): {said}")
    assert why.startswith("the program the builder runs for this key is not there (") == forced
    assert "\x1b" not in why.split("; ")[0] or not forced


def test_a_sessions_noise_with_an_apostrophe_is_shell_noise_and_binary_is_not() -> None:
    found, _ = parse_machines("ssh://b x86_64-linux\n", source="m", system="x")
    opening = "cannot open a session on builder 'b' (b): "
    said = opening + "the builder answered \"it's me\" where the serve program's reply belongs"
    assert explain(found[0], said).startswith('its shell printed "it\'s me" before the command')
    binary = opening + "the builder answered '\\x00\\x01' where the serve program's reply belongs"
    assert not explain(found[0], binary).startswith("its shell printed")
