"""Files Nix locks, opened as Nix opens them, and every error on one naming the file.

Nix opens each file it locks (a store path's ``<path>.lock``, ``gc.lock``, a temporary roots
file) with ``openLockFile``: ``O_RDWR | O_CREAT``, mode 0600. The hook opens the same files the
same way (``O_CLOEXEC`` too: no child of the coordinator holds one), so the files it makes are
those Nix would have made. Any OS error on such a file, opening it or later (locking it,
writing to it: a full disk), is a ``StoreError`` that names the file and what it was for; a
lock held by another process (``BlockingIOError`` from a non-blocking ``flock``) is the
caller's answer, not an error, and passes unchanged.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from offload.errors import StoreError

__all__ = ["file_errors", "nix_lock_file"]


@contextlib.contextmanager
def file_errors(path: str | Path, purpose: str) -> Iterator[None]:
    """OS errors inside become a ``StoreError`` naming ``path`` and ``purpose``."""
    try:
        yield
    except BlockingIOError:
        raise
    except OSError as exc:
        raise StoreError(f"{path}: {exc.strerror or exc} ({purpose})") from exc


def nix_lock_file(path: str | Path, purpose: str) -> int:
    """``path`` opened as Nix's ``openLockFile`` opens it; its descriptor."""
    with file_errors(path, purpose):
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
