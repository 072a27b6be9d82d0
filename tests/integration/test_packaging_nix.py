"""offload packaged the Nix way: default.nix, flake.nix, nix/package.nix and nix/module.nix.

There is no nixpkgs here, so nothing is built. Every file is parsed by the real Nix, and the
package and the NixOS module are evaluated against stubs of nixpkgs and of the module system:
enough to check that the package agrees with pyproject.toml and that the module sets the build
hook the way each Nix version reads it.
"""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
NIX_FILES = ["default.nix", "flake.nix", "nix/package.nix", "nix/module.nix"]

# Just the parts of lib, pkgs and the module system the two files use.
STUB_LIB = """{
  fileset = { toSource = a: a.fileset; unions = map toString; };
  makeBinPath = ps: builtins.concatStringsSep ":" (map (p: p + "/bin") ps);
  licenses.mit = "mit";
  platforms.unix = [ "unix" ];
  mkEnableOption = d: { option = "enable"; };
  mkOption = o: o;
  mkIf = condition: content: { _if = condition; inherit content; };
  mkDefault = v: v;
  literalExpression = t: t;
  types = { package = "package"; bool = "bool"; path = "path"; };
  versionAtLeast = a: b: builtins.compareVersions a b >= 0;
  optionalAttrs = c: s: if c then s else { };
}"""


def _eval(expr: str) -> Any:
    done = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("name", NIX_FILES)
def test_nix_parses_the_file(name: str) -> None:
    done = subprocess.run(
        ["nix-instantiate", "--parse", str(ROOT / name)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_the_package_agrees_with_pyproject() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    package = _eval(
        f"""import {ROOT}/nix/package.nix {{
          lib = {STUB_LIB};
          python3Packages = {{
            buildPythonApplication = a: a;
            setuptools = "setuptools"; mypy = "mypy";
            rich = "rich"; typing-extensions = "typing-extensions";
          }};
          nix = "/nix-pkg"; openssh = "/openssh-pkg";
        }}"""
    )
    assert package["version"] == project["version"]
    assert package["pname"] == project["name"]
    wanted = {re.split(r"[<>=!~ ]", dep)[0].replace("_", "-") for dep in project["dependencies"]}
    assert set(package["dependencies"]) == wanted
    # Its programs are plain scripts (bin/), not entry points: the package installs them too.
    programs = {Path(f).name for f in pyproject["tool"]["setuptools"]["script-files"]}
    assert package["meta"]["mainProgram"] in programs | set(project.get("scripts", {}))
    # Built compiled (setup.py), with mypyc from mypy, and setup.py is in its source.
    assert package["env"]["OFFLOAD_USE_MYPYC"] == "1"
    assert package["build-system"] == ["setuptools", "mypy"]
    assert sorted(package["src"]) == sorted(
        str(ROOT / name) for name in ("pyproject.toml", "setup.py", "README.md", "src", "bin")
    )
    # The system's Nix and ssh come first; the package's own only when there are none.
    assert package["makeWrapperArgs"][:3] == ["--suffix", "PATH", ":"]
    assert "/nix-pkg/bin" in package["makeWrapperArgs"][3]


def _module(nix_version: str, hook: str = "true") -> Any:
    return _eval(
        f"""(import {ROOT}/nix/module.nix {{
          lib = {STUB_LIB};
          pkgs = {{
            offload = "/nix/store/x-offload";
            formats.toml = _: {{ type = "toml"; generate = name: v: "/nix/store/y-" + name; }};
          }};
          options.nix.buildMachines.type = "buildMachines";
          config = {{
            nix.package.version = "{nix_version}";
            services.offload = {{
              enable = true; package = "/nix/store/x-offload"; hook = {hook};
              buildMachines = [ {{ hostName = "b"; }} ]; stateDir = "/var/lib/offload";
              settings = {{ }};
            }};
          }};
        }})"""
    )


@pytest.mark.parametrize(
    ("nix_version", "via_nix_config"),
    [("2.8.0", False), ("2.18.1", False), ("2.25.0", True), ("2.33.1", True), ("2.34.0", False)],
)
def test_the_module_sets_the_hook_where_each_nix_reads_it(
    nix_version: str, via_nix_config: bool
) -> None:
    module = _module(nix_version)
    assert module["config"]["_if"] is True
    config = module["config"]["content"]
    hook = "/nix/store/x-offload/bin/offload-hook"
    assert config["nix"]["settings"]["build-hook"] == {"_if": True, "content": hook}
    assert config["nix"]["buildMachines"] == [{"hostName": "b"}]
    environment = config["systemd"]["services"]["nix-daemon"]["environment"]
    assert environment["OFFLOAD_STATE_DIR"] == "/var/lib/offload"
    assert environment.get("NIX_CONFIG") == (f"build-hook = {hook}" if via_nix_config else None)
    assert config["environment"]["etc"]["offload/offload.toml"]["_if"] is False


def test_the_module_without_the_hook_leaves_nix_its_own() -> None:
    config = _module("2.28.0", hook="false")["config"]["content"]
    assert config["nix"]["settings"]["build-hook"]["_if"] is False
    assert "NIX_CONFIG" not in config["systemd"]["services"]["nix-daemon"]["environment"]
    assert config["nix"]["distributedBuilds"] is True  # there are buildMachines
