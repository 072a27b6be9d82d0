"""A session whose program gave no handshake (``offload.transport.links.lending.not_started``):
a shell that did not find the program says it is not on the builder's PATH; Nix's own error
(it ran, so it is there) is never taken for that, whatever its last words. The session's
error, ``offload build``'s line and doctor's row say it, and its fix, in one wording."""

from __future__ import annotations

import asyncio
import contextlib
import os

import pytest

from offload.ansi import strip_ansi
from offload.build.faults import explain
from offload.config.machines import parse_machines
from offload.doctor.facts import nix_check
from offload.errors import ProtocolError, TransportError
from offload.names import LOCAL
from offload.transport.links.lending import not_started
from offload.transport.links.local import LocalTransport
from offload.transport.missing_program import (
    NOT_ON_PATH,
    NOT_ON_PATH_HERE,
    fix_path_here,
    install_nix,
    mend_settings,
    not_on_path,
)

CLOSED = ProtocolError("closed the connection during the handshake")


@pytest.mark.parametrize(
    "said",
    [
        "sh: 1: exec: nix-store: not found",
        "bash: line 1: nix-daemon: command not found",
        "bash: line 1: /opt/nix/bin/nix-store: No such file or directory",
    ],
)
def test_a_program_the_shell_did_not_find_is_not_on_the_path(said: str) -> None:
    error = not_started("`nix-store --serve --write`", CLOSED, ["", said], "fast")
    assert error.message == f"`nix-store --serve --write` {NOT_ON_PATH}: {said}"
    assert error.peer == "fast"


@pytest.mark.parametrize(
    "said",
    [
        # ssh-ng:// to a builder whose nix-daemon is not running (no socket)
        (
            "error: cannot connect to socket at '/nix/var/nix/daemon-socket/socket': "
            "No such file or directory"
        ),
        (
            "\x1b[31;1merror:\x1b[0m opening lock file '/nix/var/nix/db/big-lock': "
            "No such file or directory"
        ),
    ],
)
def test_nix_s_own_error_is_not_a_missing_program(said: str) -> None:
    error = not_started("`nix-daemon --stdio`", CLOSED, [said], "fast")
    assert NOT_ON_PATH not in error.message
    assert error.message == f"`nix-daemon --stdio` stopped: {strip_ansi(said)}"


def test_nix_stopped_by_its_settings_is_told_to_mend_them_not_to_install_nix() -> None:
    # Nix 2.8 follows a setting it refuses with "Try 'nix-store --help' ...": the session's
    # error ended with that, and its fix was installing Nix.
    said = ["error: configuration setting 'max-jobs' should be 'auto' or an integer",
            "Try 'nix-store --help' for more information."]  # fmt: skip
    error = not_started("`nix-store --serve --write`", CLOSED, said, "fast")
    assert error.message == f"`nix-store --serve --write` stopped: {said[0]}"
    assert error.hint == mend_settings()
    here = not_started("`nix-store --serve --write`", CLOSED, said, LOCAL)
    assert here.hint == mend_settings(here=True)


def test_a_missing_program_and_its_fix_are_worded_one_way_wherever_said() -> None:
    # The session's hint ("check that Nix is installed and on PATH ..."), offload build's
    # line and doctor's row ("... ?remote-program=/path/to/nix-store", even for nix-daemon)
    # gave the same fix in three wordings.
    said, program = "sh: 1: exec: nix-store: not found", "`nix-store --serve --write`"
    session = not_started(program, CLOSED, [said], "a")
    row = nix_check(127, "", said + "\n", program)
    (machine,), _ = parse_machines(
        "ssh://a x86_64-linux\n", source="/etc/nix/machines", system="x86_64-linux"
    )
    line = explain(machine, session.message)
    assert session.message == row.detail == not_on_path(program, said)
    assert session.hint == row.fix == install_nix()
    assert line == f"{not_on_path(program, said)}; {install_nix('/etc/nix/machines:1')}"


def test_this_host_s_own_program_missing_is_said_as_this_host_s() -> None:
    # The local store's session (offload-hook's inputs and outputs go through it): said as a
    # builder's, and the builder was backed off for it.
    said = "sh: 1: exec: nix-store: not found"
    error = not_started("`nix-store --serve --write`", CLOSED, [said], LOCAL)
    assert error.message == f"`nix-store --serve --write` {NOT_ON_PATH_HERE}: {said}"
    assert (error.hint, error.peer) == (fix_path_here(), LOCAL)
    assert "builder" not in f"{error.message} {error.hint}"
    other = not_started("`nix-store --serve --write`", CLOSED, ["no"], LOCAL)
    assert (other.hint, other.peer) == (fix_path_here(), LOCAL)


def test_this_host_s_store_session_that_cannot_be_spawned_names_this_host() -> None:
    # A spawn that fails (here an environment string over Linux's 128 KiB: E2BIG) is this
    # host's, as a session that started and said nothing is: offload-hook backs off no builder.
    transport = LocalTransport(env={**os.environ, "OFFLOAD_TOO_BIG": "x" * 200_000})

    async def start() -> None:
        async with contextlib.AsyncExitStack() as stack:
            await transport.start(stack)

    with pytest.raises(TransportError) as caught:
        asyncio.run(start())
    assert "Argument list too long" in caught.value.message
    assert caught.value.peer == LOCAL
