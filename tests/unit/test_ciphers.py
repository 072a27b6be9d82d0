"""The cipher order a master is offered (``offload.transport.ciphers``): the pure parts; the
negotiation itself is tested against a real sshd in tests/integration/test_ciphers.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from offload.config.machines import parse_machines
from offload.procfs import running
from offload.transport import ciphers
from offload.transport.ciphers import cpu_has_aes, gcm_first, offered_ciphers
from offload.transport.ssh import SshTarget, master_argv, ssh_argv, ssh_target

DEFAULT = (
    "chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr,"
    "aes128-gcm@openssh.com,aes256-gcm@openssh.com"
)


def test_gcm_ciphers_move_to_the_front_in_their_order() -> None:
    assert gcm_first(DEFAULT) == (
        "aes128-gcm@openssh.com,aes256-gcm@openssh.com,"
        "chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr"
    )


@pytest.mark.parametrize(
    "listed",
    ["chacha20-poly1305@openssh.com,aes128-ctr", "aes256-gcm@openssh.com,aes128-ctr", ""],
    ids=["no-gcm", "gcm-first", "empty"],
)
def test_a_list_gcm_first_would_not_change_offers_nothing(listed: str) -> None:
    assert gcm_first(listed) is None


@pytest.mark.parametrize(
    ("text", "has"),
    [
        ("processor\t: 0\nflags\t\t: fpu sse2 aes avx2\nbugs\t\t: spectre\n", True),
        ("processor\t: 0\nflags\t\t: fpu sse2 avx2 aesni_like\n", False),
        ("processor\t: 0\nFeatures\t: fp asimd aes pmull sha1\n", True),
        ("processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 cpuid\n", False),  # a Pi 4
        ("", False),
    ],
    ids=["x86", "x86-none", "arm", "arm-none", "nothing"],
)
def test_this_hosts_aes_is_read_from_cpuinfo(text: str, has: bool) -> None:
    assert cpu_has_aes(text) is has


@pytest.mark.parametrize(
    ("systems", "aes"),
    [
        ("x86_64-linux", True),
        ("x86_64-linux,i686-linux", True),
        ("i686-linux", False),
        ("aarch64-darwin,x86_64-darwin", True),
        ("aarch64-linux", False),
        ("x86_64-linux,aarch64-linux", False),
    ],
)
def test_a_builders_aes_is_told_by_all_its_systems(systems: str, aes: bool) -> None:
    (machine,), _ = parse_machines(f"ssh://b {systems}\n", source="m", system="x86_64-linux")
    assert ssh_target(machine).aes is aes


def test_the_offer_comes_after_nix_sshopts_so_theirs_is_first() -> None:
    argv = ssh_argv(SshTarget("b"), nix_sshopts="-c aes256-ctr", ciphers="x,y")
    assert argv.index("-c") < argv.index("Ciphers=x,y")
    assert "Ciphers=x,y" in master_argv(SshTarget("b"), control_path=Path("/c/m"), ciphers="x,y")
    assert not any(word.startswith("Ciphers=") for word in ssh_argv(SshTarget("b")))


def test_a_host_without_aes_offers_nothing_and_asks_ssh_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ciphers, "this_host_has_aes", lambda: False)
    argv = ["/nonexistent/ssh", "--", "b"]  # would fail if run
    assert asyncio.run(offered_ciphers(argv, {})) is None


def test_an_ssh_that_cannot_resolve_offers_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ciphers, "this_host_has_aes", lambda: True)
    assert asyncio.run(offered_ciphers(["/nonexistent/ssh", "--", "b"], {})) is None


def test_an_ssh_that_does_not_answer_in_time_offers_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A config's ``Match exec`` command that hangs: ssh's order is kept, nothing is left.
    ssh = tmp_path / "ssh"
    ssh.write_text(f"#!/bin/sh\necho $$ >> {tmp_path}/pids\nexec sleep 60\n")
    ssh.chmod(0o755)
    monkeypatch.setattr(ciphers, "RESOLVE_TIMEOUT", 1.0)
    monkeypatch.setattr(ciphers, "this_host_has_aes", lambda: True)
    # Without the timeout this waits the full minute: 20 s is a bound no run comes near.
    offered = asyncio.run(asyncio.wait_for(offered_ciphers([str(ssh), "--", "b"], {}), 20))
    assert offered is None
    pids = [int(line) for line in (tmp_path / "pids").read_text().split()]
    assert len(pids) == 2
    assert not any(running(pid) for pid in pids)
