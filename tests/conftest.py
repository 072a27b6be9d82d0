"""Shared fixtures."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload.fleet import DEFAULT_SPECS, Fleet, fleet_down, fleet_up


@pytest.fixture(scope="session")
def fleet() -> Iterator[Fleet]:
    """The three-member local fleet (fast:4:2, medium:2:2, slow:1:2), once per session.

    Started only when a test asks for it, and always stopped and removed afterwards. The
    directory is short on purpose: sshd and ssh limit path lengths.
    """
    root = Path(tempfile.mkdtemp(prefix="ofl", dir="/tmp"))
    try:
        yield fleet_up(root, DEFAULT_SPECS)
    finally:
        try:
            fleet_down(root, purge=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)
