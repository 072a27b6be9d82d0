"""A fixed-output derivation built on a builder comes home with its content address, as Nix's
own hook keeps it (shared fleet, real Nix, -j 0)."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

from offload.fleet import Fleet
from tests.helpers.offload_run import offload_argv, offload_env


def test_a_fixed_output_built_there_keeps_its_ca_here(fleet: Fleet, tmp_path: Path) -> None:
    # It came home in an export stream, whose format has no ca: `nix path-info` showed none,
    # and copying it on to a store that requires signatures failed.
    text = f"fixed {uuid.uuid4().hex}\n"
    (tmp_path / "text").write_text(text)
    digest = subprocess.run(
        ["nix-hash", "--type", "sha256", "--flat", "--base32", str(tmp_path / "text")],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    (tmp_path / "fod.nix").write_text(
        f'derivation {{ name = "fod"; system = builtins.currentSystem; builder = "/bin/sh";'
        f' args = ["-c" "printf \'{text.strip()}\\\\n\' > $out"]; outputHashMode = "flat";'
        f' outputHashAlgo = "sha256"; outputHash = "{digest}"; }}\n'
    )
    done = subprocess.run(
        [*offload_argv("fod.nix", "--no-out-link", "-j", "0"),
         "--builders", f"@{fleet.machines_file}"],
        env=offload_env(fleet, tmp_path), cwd=tmp_path, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout.strip()
    assert Path(out).read_text() == text
    info = subprocess.run(
        ["nix", "--extra-experimental-features", "nix-command", "path-info", "--json", out],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert json.loads(info)[0].get("ca") == f"fixed:sha256:{digest}"
