"""Build logs where Nix keeps them: `nix-store -l` finds a build offload ran, and
`offload log` finds one Nix ran. Real Nix, the real local fleet."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from offload.fleet import Fleet
from offload.nix_log_copies import nix_log_path
from tests.helpers.nix_files import nix_file
from tests.helpers.offload_run import offload, offload_env


@pytest.mark.parametrize("remote", [True, False], ids=["builder", "this-machine"])
def test_nix_store_l_reads_the_log_of_a_build(fleet: Fleet, tmp_path: Path, remote: bool) -> None:
    # A build on this machine too: offload runs it through nix-store --serve, which keeps no
    # log, and `nix-store -l` said "not available" where nix-build's build had one.
    words = f"{'remote' if remote else 'local'}-words-{uuid.uuid4().hex}"
    file = nix_file(tmp_path, f'{{ t = mk "t" "echo {words}; echo > $out" {{}}; }}\n')
    where = ["--builders", f"@{fleet.machines_file}", "-j", "0"] if remote else ["--builders", ""]
    done = offload(fleet, tmp_path, file, "-A", "t", *where, "--no-out-link")
    assert done.returncode == 0, done.stderr
    out = done.stdout.strip()
    drv = subprocess.run(
        ["nix-store", "-q", "--deriver", out], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert nix_log_path(drv).exists()
    for argv in (["nix-store", "-l", out], ["nix-store", "--read-log", drv]):
        shown = subprocess.run(argv, capture_output=True, text=True, check=False)
        assert shown.returncode == 0, shown.stderr
        assert words in shown.stdout


def test_offload_log_reads_a_build_nix_ran(fleet: Fleet, tmp_path: Path) -> None:
    words = f"nix-words-{uuid.uuid4().hex}"
    file = nix_file(tmp_path, f'{{ t = mk "t" "echo {words}; echo > $out" {{}}; }}\n')
    built = subprocess.run(
        ["nix-build", "--option", "substituters", "", "--no-out-link", str(file), "-A", "t"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    shown = subprocess.run(
        [sys.executable, "-m", "offload", "log", built.stdout.strip()],
        capture_output=True,
        text=True,
        check=False,
        env=offload_env(fleet, tmp_path),
    )
    assert shown.returncode == 0, shown.stderr
    assert words in shown.stdout
