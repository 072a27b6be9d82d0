"""The hook coordinator's log: its stderr, which the hook that starts it points at
``hook-coordinator.log`` in the state directory (``offload.hook.client``).

Nobody watches it as it is written: a user reads it later, after a hook said the coordinator
stopped, or to find why a build was not kept. So every line starts with the local time it was
written, to be matched with the build going on then, and says it is the coordinator's. Python's
``logging`` (a remote process the transport could not stop, ``transport.links.pool``) writes
there in the same form (``configure``).
"""

from __future__ import annotations

import logging
import sys
import time

__all__ = ["DATE_FORMAT", "configure", "note"]

DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
_PREFIX = "offload coordinator: "


def note(text: str) -> None:
    """One line of ``text`` into the log."""
    sys.stderr.write(f"{time.strftime(DATE_FORMAT)} {_PREFIX}{text}\n")


def configure() -> None:
    """Warnings of the modules below the coordinator into the log, as ``note`` writes."""
    logging.basicConfig(
        format=f"%(asctime)s {_PREFIX}%(message)s", datefmt=DATE_FORMAT, level=logging.WARNING
    )
