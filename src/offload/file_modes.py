"""The mode of a file offload writes for people to open or share (a report, setup's files).

Written to a temporary name and moved into place, such a file would get mkstemp's 0600; it gets
what ``open`` would have given it instead: 0644 (0755 when executable) less the user's umask,
so ``umask 077`` keeps it private as it keeps everything else the user writes.
"""

from __future__ import annotations

import os
import threading

__all__ = ["readable_mode"]

_LOCK = threading.Lock()  # os.umask can only be read by setting it


def readable_mode(*, executable: bool = False) -> int:
    with _LOCK:
        umask = os.umask(0o022)
        os.umask(umask)
    return (0o755 if executable else 0o644) & ~umask
