"""offload-hook and offload build on a host whose PATH has no ssh: a program that cannot start
here is this host's fault, said with its fix, and no builder is backed off for it in later
runs. Each builder was backed off in turn ("builder 'b1' failed: cannot run ssh: ..."),
host-wide and kept in backoff.json, and the install hint was dropped. The same for a
NIX_SSHOPTS that ssh refuses whatever the host, in the hook (``offload build``'s is tested in
test_build_errors)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from offload.backoff import load_backoff
from offload.fleet import Fleet
from tests.helpers.hook_runs import nix_build
from tests.helpers.nix_files import SPEED, nix_file
from tests.helpers.offload_run import offload, offload_env

pytestmark = pytest.mark.usefixtures("coordinators_stopped")


def _path_without_ssh(tmp_path: Path) -> str:
    """A PATH of one directory: every program of this PATH's but ssh."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for directory in map(Path, reversed(os.environ["PATH"].split(os.pathsep))):
        if not directory.is_dir():
            continue
        for program in directory.iterdir():
            if program.name != "ssh":
                target = bin_dir / program.name
                target.unlink(missing_ok=True)  # the first on PATH wins, as it would
                target.symlink_to(program)
    return str(bin_dir)


def test_no_ssh_here_is_said_and_backs_no_builder_off(fleet: Fleet, tmp_path: Path) -> None:
    file = nix_file(tmp_path, f'mk "nossh" "{SPEED} > $out" {{}}\n')
    done = nix_build(fleet, tmp_path, file, "-j0", PATH=_path_without_ssh(tmp_path))
    assert done.returncode != 0  # no ssh, no local slot: Nix cannot build it
    said = [line for line in done.stderr.splitlines() if "cannot run ssh" in line]
    assert said, done.stderr
    assert "install OpenSSH" in said[0]
    assert "builder '" not in done.stderr.split("cannot run ssh")[0].splitlines()[-1]
    assert load_backoff(tmp_path / "state" / "backoff.json", time.time()) == {}


def test_offload_build_without_ssh_builds_here_and_backs_no_builder_off(
    fleet: Fleet, tmp_path: Path
) -> None:
    # The builders are left out of this run (said, in --json too), not remembered as down:
    # the next run, with ssh back, found them backed off "after 1 failure".
    file = nix_file(tmp_path, f'mk "nossh-build" "{SPEED} > $out" {{}}\n')
    env = offload_env(fleet, tmp_path, PATH=_path_without_ssh(tmp_path))
    builders = f"@{fleet.machines_file}"
    done = offload(fleet, tmp_path, file, "--no-out-link", "--builders", builders, env=env)
    assert done.returncode == 0, done.stderr
    down = next(line for line in done.stderr.splitlines() if "cannot run ssh" in line)
    assert "; install OpenSSH" in down
    assert load_backoff(tmp_path / "state" / "backoff.json", time.time()) == {}


def test_hook_with_sshopts_ssh_refuses_backs_no_builder_off(fleet: Fleet, tmp_path: Path) -> None:
    # Each builder was backed off for every later build, "failed: ... invalid time value".
    file = nix_file(tmp_path, f'mk "badopts" "{SPEED} > $out" {{}}\n')
    sshopts = fleet.env()["NIX_SSHOPTS"] + " -o ServerAliveInterval=x"
    done = nix_build(fleet, tmp_path, file, "-j0", NIX_SSHOPTS=sshopts)
    assert done.returncode != 0  # no builder, no local slot: Nix cannot build it
    said = [line for line in done.stderr.splitlines() if "ssh refuses NIX_SSHOPTS" in line]
    assert len(said) == 1, done.stderr  # once, for every builder alike (a review)
    assert all(f"'{member.spec.name}'" in said[0] for member in fleet.members)
    assert "invalid time value" in said[0]
    assert "none is backed off" in said[0]
    assert "failed:" not in done.stderr
    assert load_backoff(tmp_path / "state" / "backoff.json", time.time()) == {}
    # Mended, the builders build at once: nothing was kept against them.
    again = nix_build(fleet, tmp_path, file, "-j0")
    assert again.returncode == 0, again.stderr
