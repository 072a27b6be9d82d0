"""What the hook has sent back to one Nix process to build locally, and when it should be done.

Nix 2.8 asks the hook about every ready derivation before it starts any local build, and says
its local slot is free each time (``amWilling`` counts only builds already running). A hook that
believed it would decline them all and Nix would build them one after another on the local
machine while the builders sat idle. So each decline is written down, per Nix process (the
hook's parent: ``nix-build``, or the daemon's worker for one client), with the time the build
is expected to end; the next decision sees the local machine's ``max-jobs`` slots busy until
then. A derivation asked about again is still waiting, so its old entry is dropped first (also
when Nix's own slots are full then: it is not building there either, and an entry left would
hold a local slot no build uses until its expected end); an entry past its expected end is
gone. The file is tiny and written under an exclusive lock. The files of Nix processes that
have ended are removed as a new one is made: nothing reads them again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

from offload.numerals import is_decimal
from offload.procfs import running
from offload.state_json import MAX_BYTES, decode_state_json

__all__ = ["LocalQueue"]


class LocalQueue:
    def __init__(self, state: Path, parent: int) -> None:
        self.path = state / "local-queue" / f"{parent}.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, float]]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.path.exists():
            _sweep(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "r+b") as file:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # A damaged file is an empty queue: "[]" had raised, Infinity held a local slot
            # for ever, a 400-digit number overflowed (decode_state_json refuses them).
            data = decode_state_json(file.read(MAX_BYTES + 1))
            entries = {
                str(k): float(v)
                for k, v in (data.items() if isinstance(data, dict) else ())
                if isinstance(v, int | float) and not isinstance(v, bool)
            }
            yield entries
            file.seek(0)
            file.truncate()
            file.write(json.dumps(entries).encode())

    def start(self, drv_path: str, slots: int, now: float) -> float:
        """When a local slot frees for ``drv_path``, given the declines still expected to run."""
        with self._locked() as entries:
            entries.pop(drv_path, None)
            for drv, end in list(entries.items()):
                if end <= now:
                    del entries[drv]
            ends = sorted(entries.values())
        if len(ends) < max(slots, 1):
            return now
        return ends[len(ends) - max(slots, 1)]

    def add(self, drv_path: str, end: float) -> None:
        with self._locked() as entries:
            entries[drv_path] = end

    def forget(self, drv_path: str) -> None:
        """``drv_path`` is asked about again: it was not built here after all (so far)."""
        if self.path.exists():
            with self._locked() as entries:
                entries.pop(drv_path, None)


def _sweep(directory: Path) -> None:
    """Remove the files of Nix processes that are gone (a pid recycled since only keeps its
    file, whose entries expire anyway)."""
    for path in directory.glob("*.json"):
        if is_decimal(path.stem) and not running(int(path.stem)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
