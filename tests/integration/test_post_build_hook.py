"""Nix's post-build-hook under `offload build`: run on this host for each build on a builder
once its outputs are here, as Nix runs it after its own hook's builds; real Nix, the fleet.

A builder's own Nix runs the builder's setting, never this host's: a hook uploading to a cache
or signing what was built missed every build that ran on a builder."""

from __future__ import annotations

import subprocess
from pathlib import Path

from offload.fleet import Fleet
from tests.helpers.nix_files import SPEED, nix_file
from tests.helpers.offload_run import offload

GRAPH = f"""rec {{
  dep = mk "dep" "{SPEED} > $out" {{}};
  top = mk "top" "/bin/cat $dep > $out" {{ inherit dep; }};
}}
"""


def _hook(tmp_path: Path, code: int = 0) -> tuple[Path, Path]:
    seen = tmp_path / "seen"
    hook = tmp_path / "hook.sh"
    hook.write_text(
        f'#!/bin/sh\necho "$DRV_PATH $OUT_PATHS" >>{seen}\necho hook-says-hi\nexit {code}\n'
    )
    hook.chmod(0o755)
    return hook, seen


def _drv(file: Path, attr: str) -> tuple[str, str]:
    drv = subprocess.run(
        ["nix-instantiate", str(file), "-A", attr], capture_output=True, text=True, check=True
    ).stdout.strip()
    out = subprocess.run(
        ["nix-store", "-q", "--outputs", drv], capture_output=True, text=True, check=True
    ).stdout.strip()
    return drv, out


def test_the_hook_runs_here_for_each_build_on_a_builder(fleet: Fleet, tmp_path: Path) -> None:
    hook, seen = _hook(tmp_path)
    file = nix_file(tmp_path, GRAPH)
    builders = ("--builders", f"@{fleet.machines_file}", "-j", "0")
    done = offload(
        fleet, tmp_path, file, "-A", "top", *builders, "--option", "post-build-hook", str(hook)
    )
    assert done.returncode == 0, done.stderr
    # Both builds, each once with its outputs, as Nix's own hook's builds get it: dep's
    # outputs came home for it though nothing here needed them.
    assert sorted(seen.read_text().splitlines()) == sorted(
        " ".join(_drv(file, attr)) for attr in ("dep", "top")
    )
    for attr in ("dep", "top"):
        assert Path(_drv(file, attr)[1]).exists()
    assert "hook-says-hi" in done.stderr  # its lines are the build's


def test_a_hook_that_fails_fails_its_build_in_nixs_words(fleet: Fleet, tmp_path: Path) -> None:
    hook, seen = _hook(tmp_path, code=3)
    file = nix_file(tmp_path, GRAPH)
    builders = ("--builders", f"@{fleet.machines_file}", "-j", "0")
    done = offload(
        fleet, tmp_path, file, "-A", "dep", *builders, "--option", "post-build-hook", str(hook)
    )
    assert done.returncode == 1, done.stderr  # nix-build's exit for it
    assert f"failed: program '{hook}' failed with exit code 3" in done.stderr
    assert len(seen.read_text().splitlines()) == 1


def test_a_hook_that_fails_stops_the_run_with_k_too(fleet: Fleet, tmp_path: Path) -> None:
    # nix-build stops at it, -k or not; with -k the run went on, and top's hook ran as well
    # under a dep reported failed.
    hook, seen = _hook(tmp_path, code=3)
    file = nix_file(tmp_path, GRAPH)
    builders = ("--builders", f"@{fleet.machines_file}", "-j", "0", "-k")
    done = offload(
        fleet, tmp_path, file, "-A", "top", *builders, "--option", "post-build-hook", str(hook)
    )
    assert done.returncode == 1, done.stderr
    # dep's hook, and no other: top, stopped or built on the builder meanwhile, gets none.
    assert seen.read_text().splitlines() == [" ".join(_drv(file, "dep"))]
