"""offload's copies of its build logs where Nix keeps its own, so `nix log` and `nix-store -l`
find a build offload sent away as they find one Nix's own hook sent: bzip2 under
``$NIX_LOG_DIR/drvs``, whole or not at all."""

from __future__ import annotations

import bz2
import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

from offload.history.nix_logs import default_drvs_dir

__all__ = ["drv_name", "keep_for_nix", "nix_log_path"]

_READ_SIZE = 1 << 20  # bytes compressed at a time: a log may be hundreds of MiB


def nix_log_path(drv_path: str, env: Mapping[str, str] | None = None) -> Path:
    """Where Nix 2.8 keeps a build's log (DerivationGoal::openLogFile, compress-build-log on):
    ``$NIX_LOG_DIR/drvs/<first 2 chars>/<rest of the basename>.bz2``, where `nix log` and
    `nix-store -l` read it (LocalFSStore::getBuildLog)."""
    name = drv_name(drv_path)
    return default_drvs_dir(env) / name[:2] / f"{name[2:]}.bz2"


def keep_for_nix(drv_path: str, text: Path, target: Path | None = None, *, started: float) -> bool:
    """A build's log copied where Nix keeps logs, so `nix log` finds it; False when that
    directory is not ours to write (not root, no daemon's log dir). Builds on this machine too:
    offload runs them through ``nix-store --serve``, which keeps no log (Nix's serve sets
    ``keepLog`` false), and `nix-store -l` found none after a build nix-build would have logged.
    The copy's time is the build's start (``started``), before the file's birth: ``NixLogs``
    reads a build's time from a log's birth to its last change, and this copy's birth is not
    the build's (offload's history has the build)."""
    target = nix_log_path(drv_path) if target is None else target
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _compress(text, tmp)  # a piece at a time: a log may be hundreds of MiB
        os.utime(tmp, (started, started))
        tmp.replace(target)  # whole or not at all: Nix must never read half a bzip2 stream
    except OSError:
        # Not left behind: on a full disk, one per remote build took yet more of it.
        with contextlib.suppress(OSError):
            tmp.unlink()
        return False
    return True


def _compress(source: Path, target: Path) -> None:
    compressor = bz2.BZ2Compressor()
    with source.open("rb") as text, target.open("wb") as out:
        while chunk := text.read(_READ_SIZE):
            out.write(compressor.compress(chunk))
        out.write(compressor.flush())


def drv_name(drv_path: str) -> str:
    """The basename of a .drv path; a bare basename is accepted as is."""
    return drv_path.rstrip("/").rsplit("/", 1)[-1]
