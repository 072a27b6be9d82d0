"""offload-hook and a derivation whose output paths are known only once it is built (floating
content-addressed, here; impure and deferred ones are the same to the hook), under real Nix
2.8 with ``ca-derivations`` on, on the session's fleet.

The hook brings outputs home by path, so it declines such a derivation before any builder
sees it, says why once, and Nix builds it here: accepted, it used to fail after the build
(no path to fetch) and back its builder off for every build on this host.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from offload.fleet import Fleet
from tests.helpers.hook_runs import start_nix_build
from tests.helpers.nix_files import SPEED, nix_file
from tests.helpers.processes import stop

pytestmark = pytest.mark.usefixtures("coordinators_stopped")

BODY = f"""{{
  floating = mk "floating" "{SPEED} > $out" {{
    __contentAddressed = true;
    outputHashMode = "recursive";
    outputHashAlgo = "sha256";
  }};
}}
"""


def test_a_floating_derivation_is_left_to_nix_and_no_builder_is_backed_off(
    fleet: Fleet, tmp_path: Path
) -> None:
    file = nix_file(tmp_path, BODY)
    features = ("--extra-experimental-features", "ca-derivations")
    proc = start_nix_build(fleet, tmp_path, file, "-A", "floating", "-j1", *features)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        stop(proc)
    assert proc.returncode == 0, err
    assert err.count("is left to Nix: its outputs' paths are known only once it is built") == 1
    assert Path(out.strip()).read_text().strip() == "local"  # built here
    backoff = tmp_path / "state" / "backoff.json"
    assert not backoff.exists() or not json.loads(backoff.read_text() or "{}")
