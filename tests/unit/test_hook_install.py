"""`offload hook install --print` names offload-hook by the path it was found at.

Installed with Nix (``nix profile install``, NixOS's ``environment.systemPackages``), the
``offload`` a person runs is a symlink chain from their profile into one store path. The line
printed goes into nix.conf: a store path there is removed by the first garbage collection after
the profile moves on (an upgrade), and every build then fails with "executing '...': No such
file or directory". The profile's path follows the upgrade. Here the profile is a directory of
symlinks to this installation's scripts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@pytest.fixture
def profile(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "profile" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("offload", "offload-hook"):
        (bin_dir / name).symlink_to(BIN / name)
    return bin_dir


def _printed(argv: list[str], path: str) -> list[str]:
    done = subprocess.run(
        argv, env={**os.environ, "PATH": path}, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if line.startswith("build-hook = ")]


def test_the_profiles_path_is_printed_not_the_one_behind_its_symlinks(profile: Path) -> None:
    lines = _printed([str(profile / "offload"), "hook", "install", "--print"], os.environ["PATH"])
    assert lines == [f"build-hook = {profile / 'offload-hook'}"]


def test_one_found_on_path_is_printed_as_found(profile: Path) -> None:
    # `python -m offload`: nothing beside the module, so PATH's offload-hook, as PATH names it.
    path = f"{profile}:{os.environ['PATH']}"
    lines = _printed([sys.executable, "-m", "offload", "hook", "install", "--print"], path)
    assert lines == [f"build-hook = {profile / 'offload-hook'}"]


def test_the_one_build_line_says_who_a_daemon_takes_it_from(profile: Path) -> None:
    # Checked with Nix 2.8: an untrusted user's `--option build-hook` reaches a nix-daemon,
    # which ignores it silently and builds with its own hook.
    done = subprocess.run(
        [str(profile / "offload"), "hook", "install", "--print"], capture_output=True,
        text=True, timeout=60, check=True,
    )  # fmt: skip
    lines = done.stdout.splitlines()
    one = lines.index(f"nix-build --option build-hook {profile / 'offload-hook'} ...")
    assert "trusted user" in " ".join(lines[one - 2 : one])
