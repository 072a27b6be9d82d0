"""offload-hook whose own store cannot be reached, under real Nix 2.8 on the session's fleet.

The hook reads a build's inputs and brings its outputs home through a ``nix-store --serve``
of this host's, started from the PATH the hook was given (Nix's: a nix-daemon's, for its
hook), else from beside the Nix that started it (``offload.hook.nix_path``). One that cannot
start is this host's fault: the build fails saying so, with the fix, and no builder is backed
off for it.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from offload.fleet import Fleet
from offload.history.db import History
from offload.history.records import BuildRecord
from offload.transport.missing_program import NOT_ON_PATH_HERE
from tests.helpers.hook_runs import leaves, nix_build
from tests.helpers.nix_files import nix_file
from tests.helpers.offload_run import wait_for

pytestmark = pytest.mark.usefixtures("coordinators_stopped")


def _no_nix_store(tmp_path: Path, *, nix_build_copied: bool, nix_store: bool = False) -> str:
    """A PATH of only what nix-build and the hook need besides nix-store: the hook's own bin
    directory, nix-build, ssh and sh; nix-build a link to Nix's binary (beside nix-store, as a
    nix-daemon's is), or a copy of it alone in a directory of its own. With ``nix_store``: that
    PATH has nix-store, and no sh."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for program in ("nix-build", "ssh", "nix-store" if nix_store else "sh"):
        found = shutil.which(program)
        assert found is not None, program
        if program == "nix-build" and nix_build_copied:
            shutil.copy(Path(found).resolve(), bin_dir / program)
        else:
            (bin_dir / program).symlink_to(found)
    return f"{Path(sys.executable).parent}:{bin_dir}"


def test_no_nix_store_on_the_hook_s_path_is_taken_from_beside_the_nix_that_started_it(
    fleet: Fleet, tmp_path: Path
) -> None:
    # A nix-daemon started by systemd outside NixOS has no Nix on its PATH, nor its hooks:
    # every build failed, `nix-store --serve --write` not on this host's PATH.
    path = _no_nix_store(tmp_path, nix_build_copied=False)
    file = nix_file(tmp_path, leaves(1))
    done = nix_build(fleet, tmp_path, file, "-j0", PATH=path)
    assert done.returncode == 0, done.stderr
    assert NOT_ON_PATH_HERE not in done.stderr


def test_no_nix_store_on_its_path_nor_beside_its_nix_fails_the_build_and_backs_off_no_builder(
    fleet: Fleet, tmp_path: Path
) -> None:
    path = _no_nix_store(tmp_path, nix_build_copied=True)
    file = nix_file(tmp_path, leaves(1))
    done = nix_build(fleet, tmp_path, file, "-j0", PATH=path)
    assert done.returncode != 0, done.stderr
    # Before: "builder 'fast' failed: `nix-store --serve --write` is not on the builder's
    # PATH ...; backed off until ... for every build on this host", and the next builder the
    # same, until none was left.
    said = [line for line in done.stderr.splitlines() if NOT_ON_PATH_HERE in line]
    assert len(said) == 1, done.stderr
    assert "put Nix's bin directory on it" in said[0]
    assert "backed off" not in done.stderr
    backoff = tmp_path / "state" / "backoff.json"
    assert not backoff.exists() or json.loads(backoff.read_text()) == {}

    def kept() -> list[BuildRecord]:
        with History(tmp_path / "state" / "history.sqlite") as history:
            return history.builds(hook=True)

    # Written by the coordinator's history thread, once the build has ended.
    wait_for(lambda: bool(kept()), 20, "the failed build in the history")
    [build] = kept()
    assert build.status == "failed"
    assert NOT_ON_PATH_HERE in str(build.error)


@pytest.mark.parametrize("coordinator", ["1", "0"], ids=["coordinator", "in-process"])
def test_no_sh_on_the_hook_s_path_takes_bin_sh(
    fleet: Fleet, tmp_path: Path, coordinator: str
) -> None:
    # The local session's wrapper (and the in-process hook's guard) is a script for an sh
    # from the hook's PATH: with Nix there but no sh, every build failed ("cannot run sh: No
    # such file or directory"). /bin/sh is taken then, as every Linux system has one.
    path = _no_nix_store(tmp_path, nix_build_copied=True, nix_store=True)
    file = nix_file(tmp_path, leaves(1))
    done = nix_build(fleet, tmp_path, file, "-j0", PATH=path, OFFLOAD_HOOK_COORDINATOR=coordinator)
    assert done.returncode == 0, done.stderr
    assert "backed off" not in done.stderr
