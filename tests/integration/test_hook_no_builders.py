"""`offload-hook` under real Nix 2.8 with no builders at all (``--builders ''``).

The hook answers ``decline-permanently``, as build-remote does, and Nix then closes its stdin
and kills the hook process, so the coordinator serving it finds the hook gone when it would
send its exit code: that is Nix being done with its hook, not a failure for
``hook-coordinator.log``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from offload.hook.client import COORDINATOR_LOG
from tests.helpers.hook_runs import HOOK
from tests.helpers.nix_files import nix_file

pytestmark = pytest.mark.usefixtures("coordinators_stopped")


def _nix_build(file: Path, state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OFFLOAD_STATE_DIR": str(state)}
    return subprocess.run(
        ["nix-build", str(file), "--no-out-link", "--option", "build-hook", HOOK,
         "--option", "substituters", "", "--builders", "", *args],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_no_builders_builds_locally_and_logs_no_failure(tmp_path: Path) -> None:
    state = tmp_path / "state"
    file = nix_file(
        tmp_path, '[ (mk "here" "echo built > $out" {}) (mk "too" "echo t > $out" {}) ]'
    )
    done = _nix_build(file, state, "-j1")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.split()) == 2
    # -j0: nothing can build them; Nix says so in its own words, and the hook logs nothing.
    again = nix_file(tmp_path, '[ (mk "nowhere" "echo n > $out" {}) ]', name="again.nix")
    refused = _nix_build(again, state, "-j0")
    assert refused.returncode == 1
    assert "unable to start any build" in refused.stderr
    log = state / COORDINATOR_LOG
    assert log.is_file()  # the coordinator served these hooks
    assert "a hook failed" not in log.read_text()
