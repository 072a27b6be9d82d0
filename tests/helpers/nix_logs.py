"""Build logs where Nix keeps them, made by tests with the times they need."""

from __future__ import annotations

import os
from pathlib import Path

from offload.history.nix_logs import file_times

HASH = "0123456789abcdfghijklmnpqrsvwxyz"


def nix_log(drvs: Path, name: str, seconds: float, *, hash_part: str = HASH) -> Path:
    """A log of the derivation ``name`` under ``drvs`` whose last change is ``seconds`` after
    its birth (now), as Nix leaves a build of that long."""
    path = drvs / hash_part[:2] / f"{hash_part[2:]}-{name}.drv.bz2"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"BZh9")
    times = file_times(path)
    assert times is not None, "this file system keeps no birth times"
    os.utime(path, (times[0], times[0] + seconds))
    return path
