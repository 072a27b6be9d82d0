import json
import os
import secrets
import subprocess
import sys

NIX = """
{ salt }:
let mk = name: deps: derivation {
  inherit name salt deps; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "echo ${name} > $out" ]; };
  a = mk "dry-a" [];
  b = mk "dry-b" [ a ];
in { inherit a b; }
"""


def test_dry_run_plans_every_missing_derivation_and_builds_nothing(tmp_path):
    (tmp_path / "d.nix").write_text(NIX)
    env = {**os.environ, "OFFLOAD_STATE_DIR": str(tmp_path / "state")}
    salt = secrets.token_hex(4)
    argv = [sys.executable, "-m", "offload", "build", str(tmp_path / "d.nix"), "-A", "b"]
    argv += ["--argstr", "salt", salt, "--builders", "", "-j", "2", "--dry-run", "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    names = [row["name"] for row in plan["build"]]
    assert names == ["dry-a", "dry-b"]  # a must come first: b depends on it
    assert {row["machine"] for row in plan["build"]} == {"local"}
    assert plan["makespan"] >= plan["lower_bound"] > 0
    drv = plan["build"][1]["drv_path"]
    out = subprocess.run(
        ["nix-store", "-q", "--outputs", drv], capture_output=True, text=True, check=True
    ).stdout.strip()
    valid = subprocess.run(["nix-store", "--check-validity", out], capture_output=True, check=False)
    assert valid.returncode != 0, "a dry run must not build"
    assert not (tmp_path / "result").exists()
