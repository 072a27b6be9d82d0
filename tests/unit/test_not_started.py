"""A session whose program gave no handshake (``offload.transport.links.lending.not_started``):
a shell that did not find the program says it is not on the builder's PATH; Nix's own error
(it ran, so it is there) is never taken for that, whatever its last words."""

from __future__ import annotations

import pytest

from offload.errors import ProtocolError
from offload.transport.links.lending import NOT_ON_PATH, not_started

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
    error = not_started("`nix-store --serve --write`", CLOSED, ["", said])
    assert error.message == f"`nix-store --serve --write` {NOT_ON_PATH}: {said}"


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
    error = not_started("`nix-daemon --stdio`", CLOSED, [said])
    assert NOT_ON_PATH not in error.message
    assert error.message.startswith("cannot start `nix-daemon --stdio`: ")
    assert said in error.message
