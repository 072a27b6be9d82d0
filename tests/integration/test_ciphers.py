"""The cipher a builder's master negotiates (``offload.transport.ciphers``), read from the
master's own debug log against the fleet's real sshd: AES-GCM where both ends have AES and
nobody chose, the user's choice wherever they made one, ssh's order for a board that may lack
AES."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import subprocess
from pathlib import Path

from offload.config.machines import Machine
from offload.fleet import Fleet
from offload.transport.ciphers import gcm_first, this_host_has_aes
from offload.transport.links import SshTransport
from offload.transport.shared import SharedSshTransport
from offload.transport.ssh import ssh_target
from tests.helpers.fleets import fleet_machine, stop_masters

CHACHA = "chacha20-poly1305@openssh.com"


def _ssh_default() -> str:
    """ssh's own list (its build's: a distribution or FIPS build may differ)."""
    argv = ["ssh", "-G", "-F", "/dev/null", "--", "x"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return next(line.split()[1] for line in out.splitlines() if line.startswith("ciphers "))


DEFAULT = _ssh_default()
FIRST = DEFAULT.split(",")[0]  # what ssh agrees on, with a server that takes all of them
# What offload offers first, on a host with AES (this one's flags decide).
OFFERED = (gcm_first(DEFAULT) or DEFAULT).split(",")[0] if this_host_has_aes() else FIRST


def _negotiated(machine: Machine, tmp_path: Path, sshopts: str) -> str:
    """The cipher of the master ``SshTransport`` starts to ``machine`` with ``sshopts`` as
    NIX_SSHOPTS (a session run over it, then closed)."""
    log = tmp_path / "ssh.log"
    log.unlink(missing_ok=True)  # ssh appends
    env = {"NIX_SSHOPTS": f"{sshopts} -E {log} -o LogLevel=DEBUG1"}

    async def connect() -> None:
        transport = SshTransport(ssh_target(machine), name=machine.name, env=env)
        try:
            code, _, err = await transport.run(["true"])
            assert code == 0, err
        finally:
            await transport.close()

    asyncio.run(connect())
    found: list[str] = re.findall(r"kex: client->server cipher: (\S+)", log.read_text())
    assert len(found) == 1, found  # one connection: the master; sessions ride on it
    return found[0]


def _negotiated_shared(machine: Machine, tmp_path: Path, sshopts: str) -> str:
    """As ``_negotiated``, for the master ``offload-hook``'s sessions start and share
    (``SharedSshTransport``), stopped afterwards."""
    log = tmp_path / "ssh.log"
    log.unlink(missing_ok=True)
    env = {"NIX_SSHOPTS": f"{sshopts} -E {log} -o LogLevel=DEBUG1"}
    control = tmp_path / "shared"
    control.mkdir()

    async def connect() -> None:
        shared = SharedSshTransport(ssh_target(machine), name=machine.name, directory=control,
                                    env=env)  # fmt: skip
        async with contextlib.AsyncExitStack() as stack:
            pipes = await shared.start(stack)
            assert pipes.pid is not None

    try:
        asyncio.run(connect())
    finally:
        stop_masters(control)
    found: list[str] = re.findall(r"kex: client->server cipher: (\S+)", log.read_text())
    assert len(found) == 1, found
    return found[0]


def test_a_master_to_an_x86_builder_offers_aes_gcm_first(fleet: Fleet, tmp_path: Path) -> None:
    assert fleet_machine(fleet, "fast").systems == ("x86_64-linux",)
    assert _negotiated(fleet_machine(fleet, "fast"), tmp_path, fleet.sshopts) == OFFERED


def test_a_board_that_may_lack_aes_keeps_sshs_order(fleet: Fleet, tmp_path: Path) -> None:
    board = dataclasses.replace(fleet_machine(fleet, "fast"), systems=("aarch64-linux",))
    assert _negotiated(board, tmp_path, fleet.sshopts) == FIRST


def test_ciphers_in_nix_sshopts_are_the_users(fleet: Fleet, tmp_path: Path) -> None:
    machine = fleet_machine(fleet, "fast")
    assert _negotiated(machine, tmp_path, f"{fleet.sshopts} -c aes256-ctr") == "aes256-ctr"
    chosen = f"{fleet.sshopts} -o Ciphers={CHACHA},aes128-gcm@openssh.com"
    assert _negotiated(machine, tmp_path, chosen) == CHACHA


def test_ciphers_in_the_users_ssh_config_are_kept(fleet: Fleet, tmp_path: Path) -> None:
    # Offload's option would come before the config file's, and ssh keeps the first value:
    # without the check against ``ssh -G``, offload's order would win.
    config = tmp_path / "ssh_config"
    config.write_text(f"Host fast\n  Ciphers {CHACHA},aes128-gcm@openssh.com\n"
                      f"Include {fleet.ssh_config}\n")  # fmt: skip
    assert _negotiated(fleet_machine(fleet, "fast"), tmp_path, f"-F {config}") == CHACHA


def test_the_hooks_shared_master_offers_the_same(fleet: Fleet, tmp_path: Path) -> None:
    # Whichever of offload build and offload-hook starts a builder's kept master, it offers
    # the same: the master is theirs to share (offload.transport.persist).
    assert _negotiated_shared(fleet_machine(fleet, "fast"), tmp_path, fleet.sshopts) == OFFERED
