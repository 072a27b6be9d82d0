"""A remote kill that fails says why on one line: ssh's own words, without its CR LF."""

from __future__ import annotations

import asyncio
import socket

import pytest

from offload.errors import SshError
from offload.transport.links.ssh_master import SshTransport
from offload.transport.shared import SharedSshTransport
from offload.transport.ssh import SshTarget


@pytest.mark.parametrize("shared", [False, True], ids=["build", "hook"])
def test_a_refused_kill_is_one_line_without_carriage_returns(tmp_path, shared):
    # A builder that went away mid-run: nothing listens on its port any more. ssh ends its
    # complaint with "\r\n" (its stderr may be a terminal); the warning is one line of a log.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        target = SshTarget(host="127.0.0.1", port=port, identity_file=str(tmp_path / "none"))
        env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
        ssh: SshTransport | SharedSshTransport = (
            SharedSshTransport(target, name="gone", directory=tmp_path / "ssh", env=env)
            if shared
            else SshTransport(target, name="gone", env=env)
        )
        with pytest.raises(SshError) as caught:
            asyncio.run(ssh.kill(12345))
    message = caught.value.message
    assert "Connection refused" in message
    assert "\r" not in message
    assert "\n" not in message
    assert message.endswith("Connection refused")
