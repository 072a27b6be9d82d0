"""Shared fixtures."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from offload.fleet import DEFAULT_SPECS, Fleet, MemberSpec, fleet_down, fleet_up


@contextlib.contextmanager
def private_fleet(
    specs: Sequence[MemberSpec] = DEFAULT_SPECS, prefix: str = "ofl"
) -> Iterator[Fleet]:
    """A fleet of its own in a fresh directory, always stopped and removed afterwards. The
    directory is short on purpose: sshd and ssh limit path lengths."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield fleet_up(root, specs)
    finally:
        try:
            fleet_down(root, purge=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def fleet() -> Iterator[Fleet]:
    """The three-member local fleet (fast:4:2, medium:2:2, slow:1:2), once per session,
    started only when a test asks for it."""
    with private_fleet() as started:
        yield started
