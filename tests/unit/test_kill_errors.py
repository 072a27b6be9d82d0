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


async def _never(*_args: object, **_kwargs: object) -> None:
    await asyncio.Event().wait()


def test_a_remote_command_or_kill_with_no_answer_is_the_links_error(tmp_path, monkeypatch):
    # A bare TimeoutError passed every handler of OffloadError: a deletion waiting on a full
    # builder's garbage collector ended the run, and a hook's hung kill skipped its teardown.
    import offload.transport.links.ssh_master as master
    from offload.transport import shared

    monkeypatch.setattr(master, "run_async", _never)
    monkeypatch.setattr(master, "CONTROL_TIMEOUT", 0.05)
    monkeypatch.setattr(master, "KILL_GRACE", 0)
    monkeypatch.setattr(shared, "run_async", _never)
    monkeypatch.setattr(shared, "KILL_TIMEOUT", 0.05)
    target = SshTarget(host="127.0.0.1", identity_file=str(tmp_path / "none"))
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    ssh = SshTransport(target, name="hung", env=env)

    async def connected() -> object:
        return tmp_path / "socket"

    monkeypatch.setattr(ssh, "_connected", connected)
    with pytest.raises(SshError, match=r"cannot run `nix-store` on builder 'hung'.*no answer"):
        asyncio.run(ssh.run(["nix-store", "--delete", "/nix/store/x"]))
    hook = SharedSshTransport(target, name="hung", directory=tmp_path / "ssh", env=env)
    with pytest.raises(SshError, match="cannot stop process 12345 on builder 'hung': no answer"):
        asyncio.run(hook.kill(12345))
