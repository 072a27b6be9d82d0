"""The hook coordinator's log: its stderr, which the hook that starts it points at
``hook-coordinator.log`` in the state directory (``offload.hook.client``).

Nobody watches it as it is written: a user reads it later, after a hook said the coordinator
stopped, or to find why a build was not kept. So every line starts with the local time it was
written, to be matched with the build going on then, and says it is the coordinator's. Python's
``logging`` (a remote process the transport could not stop, ``transport.links.pool``) writes
there in the same form (``configure``). A hook served in its own process (no coordinator) keeps
the same notes on its stderr, which Nix shows as it is written: they are said as the hook's
(``offload-hook: ...``), with no time.
"""

from __future__ import annotations

import logging
import sys
import time

__all__ = ["DATE_FORMAT", "configure", "note"]

DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
_PREFIX = "offload coordinator: "
_configured: list[bool] = []  # set by ``configure``: this process is the coordinator


def note(text: str) -> None:
    """One line of ``text`` into the log (the hook's stderr, where no coordinator runs)."""
    if _configured:
        sys.stderr.write(f"{time.strftime(DATE_FORMAT)} {_PREFIX}{text}\n")
    else:
        sys.stderr.write(f"offload-hook: {text}\n")


def configure() -> None:
    """This process is the coordinator: its notes, and warnings of the modules below it, go
    into the log with their time."""
    _configured.append(True)
    logging.basicConfig(
        format=f"%(asctime)s {_PREFIX}%(message)s", datefmt=DATE_FORMAT, level=logging.WARNING
    )
