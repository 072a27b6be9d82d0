"""A first run estimates what Nix built before from Nix's own build log (real nix-build, real
offload plan); a name Nix never built is guessed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from offload.history.nix_logs import NixLogs, default_drvs_dir
from offload.scheduler.policy.guesses import DEFAULT_WORK
from tests.helpers.nix_files import nix_file

NO_CACHE = "substituters =\n"
BODY = """rec {
  logged = mk "logged-1.0" "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; echo > $out" {};
  fresh = mk "fresh-1.0" "echo > $out" {};
}
"""


def test_a_first_run_takes_what_nix_s_log_says_a_name_took(tmp_path: Path) -> None:
    built = nix_file(tmp_path, BODY, "built.nix")
    began = time.monotonic()
    nix = subprocess.run(
        ["nix-build", str(built), "-A", "logged", "--no-out-link"],
        env={**os.environ, "NIX_CONFIG": NO_CACHE},
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.monotonic() - began
    assert nix.returncode == 0, nix.stderr
    took = NixLogs(default_drvs_dir()).durations({"logged", "fresh"})
    assert took.keys() == {"logged"}
    assert 0 < took["logged"] <= wall

    # The same names again (a new salt: new derivations), offload with no history of them.
    again = nix_file(tmp_path, BODY, "again.nix")
    argv = [sys.executable, "-m", "offload", "build", str(again), "-A", "logged", "-A", "fresh"]
    argv += ["--builders", "", "-j", "2", "--dry-run", "--json"]
    env = {**os.environ, "OFFLOAD_STATE_DIR": str(tmp_path / "state"), "NIX_CONFIG": NO_CACHE}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    planned = {row["name"]: row["end"] - row["start"] for row in json.loads(done.stdout)["build"]}
    # On the local machine alone, of speed 1: the log's time as it is; the other, the guess.
    assert planned["logged-1.0"] == pytest.approx(took["logged"], abs=0.002)
    assert planned["fresh-1.0"] == pytest.approx(DEFAULT_WORK)
