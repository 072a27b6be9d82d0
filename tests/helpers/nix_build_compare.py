"""One project built by the real nix-build 2.8 and by `offload build`, to compare them.

``both`` runs the same arguments with each, locally (no builders, no binary caches) in the
project's directory, each with the test's state directory; ``errors`` is what a user reads of
a failure: from the first ``error:`` line on. ``PROJECT``'s derivations take a ``nonce`` so
that every build can be a fresh one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["COMMON", "OFFLOAD", "PROJECT", "both", "errors", "made_project", "run_in"]

PROJECT = r"""
{ a ? 1, nonce ? "", sleep ? "0" }:
let s = { b = 1; }; in
{
  ok = derivation {
    name = "ok"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "echo building ${nonce}; /bin/sleep ${sleep}; echo ${toString a} > $out" ];
  };
  random = derivation {
    name = "random-${nonce}"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "echo $RANDOM$$ > $out" ];
  };
  typo = s.a;
  lookup = (import <here/x.nix>).y;
  traced = builtins.trace "hello from eval" (s.b + 1);
  bad = derivation {
    name = "bad-${nonce}"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "exit 1" ];
  };
  waits = derivation {
    name = "waits-${nonce}"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "while [ ! -e /nonexistent/${nonce} ]; do /bin/sleep 0.1; done; echo > $out" ];
  };
  latebad = derivation {
    name = "latebad-${nonce}"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "/bin/sleep 1; exit 1" ];
  };
  noout = derivation {
    name = "noout-${nonce}"; system = builtins.currentSystem; builder = "/bin/sh";
    outputs = [ "out" "dev" ]; args = [ "-c" "echo > $out" ];
  };
  badref = derivation {
    name = "badref-${nonce}"; system = builtins.currentSystem; builder = "/bin/sh";
    allowedReferences = []; args = [ "-c" "echo ${builtins.toFile "dep" nonce} > $out" ];
  };
  featx = derivation {
    name = "featx-${nonce}"; system = builtins.currentSystem; builder = "/bin/sh";
    requiredSystemFeatures = [ "nonexistent" ]; args = [ "-c" "echo > $out" ];
  };
}
"""

# --no-out-link and no binary caches (offline: Nix would retry cache.nixos.org for seconds).
COMMON = ("--no-out-link", "--option", "substituters", "")
OFFLOAD = (sys.executable, "-m", "offload", "build", "--builders", "")


def made_project(tmp_path: Path) -> Path:
    """The project (``PROJECT`` and an ``x.nix`` beside it) written in ``tmp_path``."""
    (tmp_path / "default.nix").write_text(PROJECT)
    (tmp_path / "x.nix").write_text(
        '{ y = derivation { name = "y"; system = builtins.currentSystem; '
        'builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; }; }\n'
    )
    return tmp_path


def run_in(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OFFLOAD_STATE_DIR": str(cwd / "state")}
    return subprocess.run(
        argv, check=False, capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )


def both(cwd: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], ...]:
    nix = run_in(["nix-build", *COMMON, *args], cwd)
    return nix, run_in([*OFFLOAD, *COMMON, *args], cwd)


def errors(stderr: str) -> str:
    """From the first `error:` line on: Nix's message, position, code frame and suggestion."""
    at = stderr.find("error:")
    return stderr[at:] if at >= 0 else ""
