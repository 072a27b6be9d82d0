"""What a failed build left in a builder's store is deleted over its ssh master, with the
store program its machines line names: ``remote-program``'s words on an ``ssh://`` builder,
``nix-store`` on an ``ssh-ng://`` one, where ``remote-program`` is its daemon (shared fleet)."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from offload.config.machines import parse_machines
from offload.fleet import Fleet
from offload.transport.links import MachineLink
from tests.helpers.fleets import member_line

_BASE32 = "0123456789abcdfghijklmnpqrsvwxyz"


def _partial(fleet: Fleet, name: str) -> str:
    """A directory in member ``name``'s store that no path registers, as a cut build leaves."""
    path = "/nix/store/" + "".join(secrets.choice(_BASE32) for _ in range(32)) + "-partial"
    subprocess.run(fleet.ssh_argv(name, "mkdir", path), check=True, timeout=30)
    return path


def _there(fleet: Fleet, name: str, path: str) -> bool:
    done = subprocess.run(fleet.ssh_argv(name, "test", "-e", path), check=False, timeout=30)
    return done.returncode == 0


@pytest.mark.parametrize(
    ("scheme", "program"),
    [
        ("ssh", "env%20nix-store"),  # two words: was run as one, 'env nix-store', not found
        ("ssh-ng", "nix-daemon"),  # the daemon: was run as the store program, and failed
    ],
)
def test_partial_outputs_go_with_the_machines_line_s_program(
    fleet: Fleet, scheme: str, program: str
) -> None:
    uri, *rest = member_line(fleet, "fast").split()
    line = " ".join([f"{uri.replace('ssh://', f'{scheme}://', 1)}&remote-program={program}", *rest])
    machines, _ = parse_machines(line, source="m", system=fleet.system)
    link = MachineLink.from_machine(machines[0], env=fleet.env())
    path = _partial(fleet, "fast")
    try:
        asyncio.run(_removed(link, path))
        assert not _there(fleet, "fast", path)
    finally:
        subprocess.run(fleet.ssh_argv("fast", "rm", "-rf", path), check=False, timeout=30)


async def _removed(link: MachineLink, path: str) -> None:
    try:
        await link.remove_partial([path])
    finally:
        await link.aclose()


def test_what_a_cut_copy_left_here_goes_and_a_valid_path_stays(tmp_path) -> None:
    # A NAR is restored straight into its path here too (AddToStoreNar, an import): a copy
    # cut off mid-way (Ctrl-C, the builder lost) left the half-written tree in /nix/store.
    from offload.transport.links import LocalLink

    partial = Path("/nix/store/" + "".join(secrets.choice(_BASE32) for _ in range(32)) + "-p")
    partial.mkdir()
    (tmp_path / "kept").write_text(secrets.token_hex(8))
    valid = subprocess.run(
        ["nix-store", "--add", str(tmp_path / "kept")], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        asyncio.run(LocalLink().remove_partial([str(partial), valid]))
        assert not partial.exists()
        assert Path(valid).exists()
    finally:
        shutil.rmtree(partial, ignore_errors=True)
