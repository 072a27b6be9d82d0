"""``hook.nix_path``: a hook whose PATH has no ``nix-store`` finds it beside the Nix that
started it (its parent's executable), and loses nothing its PATH found. Real processes: a
program that starts a child (``timeout``), copied into a directory with a ``nix-store`` beside
it, starts the hook's Python, which looks at its parent as the hook does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

_SCRIPT = """
import os, shutil
from offload.hook.nix_path import nix_beside_parent
nix_beside_parent()
print(os.environ.get("PATH", "(unset)"))
print(shutil.which("sh") or "(no sh)")
print(shutil.which("nix-store") or "(no nix-store)")
"""


def _started_beside_nix(tmp_path: Path, env: Mapping[str, str]) -> tuple[Path, list[str]]:
    """The directory of the parent (with a nix-store), and what the child saw: its PATH after
    ``nix_beside_parent``, then the sh and the nix-store it would run."""
    parent_dir = tmp_path / "nix" / "bin"
    parent_dir.mkdir(parents=True)
    timeout = shutil.which("timeout")
    assert timeout is not None
    shutil.copy(timeout, parent_dir / "timeout")
    nix_store = parent_dir / "nix-store"
    nix_store.write_text("#!/bin/sh\nexit 0\n")
    nix_store.chmod(0o755)
    done = subprocess.run(
        [str(parent_dir / "timeout"), "60", sys.executable, "-c", _SCRIPT],
        env=env, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return parent_dir, done.stdout.splitlines()


def test_a_hook_with_no_nix_store_on_its_path_takes_the_one_beside_its_parent(
    tmp_path: Path,
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    parent_dir, seen = _started_beside_nix(tmp_path, {**os.environ, "PATH": str(empty)})
    assert seen[0] == f"{empty}{os.pathsep}{parent_dir}"
    assert seen[2] == str(parent_dir / "nix-store")


def test_a_hook_started_with_no_path_keeps_exec_s_default_one(tmp_path: Path) -> None:
    # With PATH unset, a program is looked for in /bin:/usr/bin (exec's default): the hook's
    # sh and ssh (and Debian's nix-store) were found there. Its PATH was then set to the
    # parent's directory alone: "cannot run sh", and another nix-store than Debian's.
    env = {name: value for name, value in os.environ.items() if name != "PATH"}
    _, (path, sh, nix_store) = _started_beside_nix(tmp_path, env)
    assert sh != "(no sh)", path
    assert nix_store != "(no nix-store)", path
    kept = path.split(os.pathsep)[: len(os.defpath.split(os.pathsep))]
    assert path == "(unset)" or kept == os.defpath.split(os.pathsep), path
