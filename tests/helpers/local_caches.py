"""The local machine's binary caches under test: a two-derivation project and its cache.

``Project`` is a Nix file whose ``top`` reads ``dep``'s output without keeping a reference to
it, built by plain nix-build or by ``offload build`` (``Project.offload``: no builders, one
local slot), with a ``file://`` cache beside it. Whether a derivation was built is read from
marker files its builder leaves in a directory outside the store (one file per build: local
builds run as different nixbld users). Tests that use it give each test's Nix a cache
directory of its own (``own_nix_cache``) and their ``project`` from ``made_project``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "NIX",
    "NIX_COMMAND",
    "NO_CACHE",
    "Project",
    "delete",
    "finished",
    "made_project",
    "own_nix_cache",
    "run_out",
    "valid",
]

NIX = """{ salt, marker, topSubstitutes ? true }:
let
  mk = name: script: extra: derivation ({
    inherit name salt;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" ("/bin/mktemp ${marker}/${name}.XXXXXX >/dev/null && " + script) ];
  } // extra);
  dep = mk "sub-dep" "echo dep-$salt > $out" {};
in {
  inherit dep;
  top = mk "sub-top" "/bin/cat $dep > $out"
    ({ inherit dep; } // (if topSubstitutes then {} else { allowSubstitutes = false; }));
}
"""
NIX_COMMAND = ["nix", "--extra-experimental-features", "nix-command"]
NO_CACHE = ["--option", "substituters", ""]


@dataclass
class Project:
    dir: Path
    file: Path
    salt: str
    marker: Path  # the builders' marker files
    cache: Path
    more: tuple[str, ...] = ()  # more arguments of the Nix file's function

    @property
    def args(self) -> list[str]:
        return [
            str(self.file),
            "--argstr",
            "salt",
            self.salt,
            "--argstr",
            "marker",
            str(self.marker),
            *self.more,
        ]

    def builds(self, name: str) -> int:
        return len(list(self.marker.glob(f"{name}.*")))

    def out(self, attr: str) -> str:
        drv = run_out("nix-instantiate", *NO_CACHE, *self.args, "-A", attr)
        return run_out("nix-store", "-q", "--outputs", drv).split()[0]

    def nix_build(self, attr: str) -> str:
        return run_out("nix-build", *NO_CACHE, "--no-out-link", *self.args, "-A", attr)

    def nix_build_from_cache(self, attr: str) -> str:
        return run_out("nix-build", *self.from_cache(), "--no-out-link", *self.args, "-A", attr)

    def offload(self, *extra: str, as_json: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.offload_argv(*extra, as_json=as_json),
            env=self.offload_env(),
            cwd=self.dir,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def offload_argv(self, *extra: str, as_json: bool = True) -> list[str]:
        """``offload build`` of ``top``: no builders, one local slot."""
        argv = [sys.executable, "-m", "offload", "build", *self.args, "-A", "top"]
        argv += ["--builders", "", "-j", "1", "--no-out-link"]
        return [*argv, *(["--json"] if as_json else []), *extra]

    def offload_env(self) -> dict[str, str]:
        return {**os.environ, "OFFLOAD_STATE_DIR": str(self.dir / "state")}

    def from_cache(self) -> list[str]:
        cache = ["--option", "substituters", f"file://{self.cache}"]
        return [*cache, "--option", "require-sigs", "false"]


def run_out(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


def valid(path: str) -> bool:
    done = subprocess.run(["nix-store", "--check-validity", path], capture_output=True, check=False)
    return done.returncode == 0


def delete(*paths: str) -> None:
    there = [p for p in paths if valid(p)]
    if there:
        run_out("nix-store", "--delete", *there)


def finished(stdout: str) -> dict[str, dict[str, Any]]:
    """Derivation name -> its job_finished event (the last one)."""
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return {e["name"]: e for e in events if e["event"] == "job_finished"}


def own_nix_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's Nix remembers the binary caches it opened in a cache directory of its own.
    Nix keeps for 7 days a cache it opened (by its URL) and skips its nix-cache-info after:
    the loopback port of a cache one test served and stopped, drawn again as another test's
    refusing port, had that test's Nix ask the refused port for narinfos as for a cache known
    to be up, and fail where the test expects the cache left out."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def made_project(tmp_path: Path) -> Iterator[Project]:
    """The test's project, its outputs deleted and its marker directory removed after."""
    # Builders run as nixbld users: the marker directory must be theirs to write, and reachable.
    marker = Path(tempfile.mkdtemp(prefix="ofl-subst-", dir="/tmp"))
    marker.chmod(0o777)
    file = tmp_path / "sub.nix"
    file.write_text(NIX)
    made = Project(tmp_path, file, uuid.uuid4().hex, marker, tmp_path / "cache")
    try:
        yield made
    finally:
        outs = [made.out("top"), made.out("dep")]
        subprocess.run(["nix-store", "--delete", *outs], capture_output=True, check=False)
        shutil.rmtree(marker, ignore_errors=True)
