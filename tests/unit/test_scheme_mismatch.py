"""A builder whose key runs the other scheme's program: Nix says only "protocol mismatch" to
the hello, and doctor and ``offload build`` say what it is and the fix."""

from __future__ import annotations

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
    assert what.endswith("to its hello, and to ssh-ng://'s too")
    assert fix.startswith("check the key's command= (or sshd's ForceCommand) on the builder")


def test_offload_build_says_it_where_ssh_said_only_protocol_mismatch() -> None:
    found, _ = parse_machines("ssh://b x86_64-linux\n", source="m", system="x")
    why = explain(found[0], "cannot connect to builder 'b' (b): error: protocol mismatch")
    assert why.startswith("the builder's key runs another program than ssh:// speaks to")
    assert "write ssh-ng:// in m:1" in why
