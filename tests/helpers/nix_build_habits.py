"""The project `offload build` and nix-build are compared on, and how each is run on it
(``tests/integration/test_nix_build_habits.py``, ``test_nix_build_ifd.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["OFFLINE", "OFFLOAD", "PROJECT", "both", "errors", "lay_out", "one"]

PROJECT = r"""
{ nonce ? "", who ? "" }:
let
  mk = name: script: derivation {
    inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ];
  };
  slow = mk "slow-${nonce}" "/bin/sleep 1; echo > $out";
  # No machine has this feature: no machine can build it.
  odd = derivation {
    name = "odd-${nonce}"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "echo > $out" ]; requiredSystemFeatures = [ "offload-test-none" ];
  };
in
{
  ok = mk "ok-${nonce}" "echo ok > $out";
  # Ready only after slow, which a failure (bad's, at once) stops unless the run goes on.
  late = mk "late-${nonce}" "echo building ${nonce}; echo ${slow} > $out";
  greet = mk "greet-${nonce}" "echo ${who} > $out";
  two = mk "two-${nonce}" "echo two > $out";
  bad = mk "bad-${nonce}" "echo failing; exit 1";
  chatty = mk "chatty-${nonce}" "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo line$i; done; exit 1";
  top = mk "top-${nonce}" "echo ${mk "dep-${nonce}" "echo > $out"} > $out";
  inherit odd;
  afterodd = mk "afterodd-${nonce}" "echo ${odd} > $out";
}
"""

# No binary caches: Nix would retry cache.nixos.org for seconds (offline here).
OFFLINE = ("--option", "substituters", "")
OFFLOAD = (sys.executable, "-m", "offload", "build", "--builders", "")


def lay_out(tmp_path: Path) -> Path:
    """``tmp_path`` as a project: ``PROJECT`` in its default.nix, a directory per tool."""
    (tmp_path / "default.nix").write_text(PROJECT)
    (tmp_path / "nix").mkdir()
    (tmp_path / "off").mkdir()
    return tmp_path


def one(project: Path, tool: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """``tool`` ("nix" or "off") with ``args``, in its own directory under ``project`` (so the
    two tools' links do not meet), reading ``stdin``."""
    command = ("nix-build",) if tool == "nix" else OFFLOAD
    return subprocess.run(
        [*command, *OFFLINE, *args],
        check=False,
        capture_output=True,
        text=True,
        input=stdin,
        cwd=project / tool,
        env={**os.environ, "OFFLOAD_STATE_DIR": str(project / "state")},
        timeout=120,
    )


def both(
    project: Path, *args: str, stdin: str = ""
) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """nix-build and offload build with the same ``args``."""
    return one(project, "nix", *args, stdin=stdin), one(project, "off", *args, stdin=stdin)


def errors(stderr: str) -> str:
    """From the first `error:` line on: Nix's message, position and code frame."""
    at = stderr.find("error:")
    return stderr[at:] if at >= 0 else ""
