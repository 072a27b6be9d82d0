"""Store paths a test adds to the local store: fresh random files, so no store has them yet."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

__all__ = ["added_random"]


def added_random(tmp_path: Path, size: int, count: int, *, prefix: str) -> list[str]:
    """``count`` files of ``size`` random bytes added with ``nix-store --add``; their paths."""
    files = []
    for i in range(count):
        data = tmp_path / f"{prefix}-{i}-{uuid.uuid4().hex[:8]}"
        data.write_bytes(os.urandom(size))
        files.append(str(data))
    out = subprocess.run(
        ["nix-store", "--add", *files], capture_output=True, text=True, check=True
    ).stdout
    return out.split()
