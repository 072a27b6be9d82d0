"""`offload build` against the real nix-build 2.8 where a builder matters: the shared local
fleet (tests/helpers/fleets.py) as both tools' builders, and what each built where."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

from offload.fleet import Fleet
from tests.helpers.offload_run import offload_argv, offload_env

IFD = r"""
{ nonce }:
let gen = derivation {
  name = "gen-${nonce}"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "echo '\"generated\"' > $out" ];
}; in {
  inherit gen;
  top = derivation {
    name = "top-${nonce}"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "echo ${import gen} > $out" ];
  };
}
"""


def test_an_import_from_derivation_is_built_on_the_builders_with_j_0(
    fleet: Fleet, tmp_path: Path
) -> None:
    # nix-build -j 0 --builders ...: the evaluation's own build (the generator) goes to a
    # builder by Nix's hook, as every build of the run; offload's evaluator built it here.
    (tmp_path / "ifd.nix").write_text(IFD)
    env = offload_env(fleet, tmp_path)
    remote = ("-j", "0", "--builders", f"@{fleet.machines_file}")
    for command in (["nix-build"], offload_argv()):
        nonce = uuid.uuid4().hex
        argv = [*command, "--no-out-link", "ifd.nix", "-A", "top", "--argstr", "nonce", nonce]
        done = subprocess.run(
            [*argv, *remote],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert Path(done.stdout.strip()).read_text() == "generated\n"
        gen = (
            subprocess.run(
                [
                    "nix-instantiate",
                    "--eval",
                    "-E",
                    f'(import ./ifd.nix {{ nonce = "{nonce}"; }}).gen.outPath',
                ],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .strip('"')
        )
        assert any(fleet.store_has(m.name, gen) for m in fleet.members), command
