"""A builder whose disk filled up during a build: the builder's fault, not the derivation's.

Nix 2.8 cannot know whether a builder got ENOSPC, so after a failed build it looks at the free
space of its store and build directory: under 8 MiB in either, it answers the build with
``TransientFailure`` and adds "note: build failure may have been caused by lack of free disk
space" to the error. Nix's own writes (a log, an output it moves or registers) fail with the
system's "No space left on device" in the error itself. Either text in Nix's own lines of its
answer is read as a full disk; the build's last log lines, which Nix quotes there after "last N
log lines:" each behind "> " (the daemon's answer, an ssh-ng:// builder's), are the build's
words, which any build may print (a test filling its own tmpfs): never read. The copy ends
"lost", so the builder is backed off with this reason and the build runs elsewhere, at most
``MAX_LOSSES`` times like any other lost build.

Nix leaves what the build wrote of its outputs in the builder's store (unregistered), keeping
the disk full; a link that can (``PartialRemover``: an ssh builder whose key may run commands)
deletes those paths there, never a valid one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from offload.ansi import strip_ansi
from offload.errors import OffloadError
from offload.protocol.serve import BuildStatus

__all__ = [
    "PARTIAL_CLEANUP_TIMEOUT",
    "Cleanup",
    "PartialRemover",
    "disk_full",
    "disk_full_error",
    "remove_partial",
]

# Nix's own note (DerivationGoal, Nix 2.0-2.33) and the C library's ENOSPC text.
_NIX_NOTE = "lack of free disk space"
_ENOSPC = "No space left on device"


# Seconds a stopped or cut-off copy may spend deleting what it left half-written on its builder.
PARTIAL_CLEANUP_TIMEOUT = 3.0


@runtime_checkable
class PartialRemover(Protocol):
    """A link that can delete unregistered paths from its machine's store."""

    async def remove_partial(self, paths: Sequence[str]) -> None: ...


def _nix_lines(error_msg: str) -> list[str]:
    """The lines of Nix's answer that are Nix's own: not the build's log lines it quotes."""
    lines = (line.strip() for line in strip_ansi(error_msg).splitlines())
    return [line for line in lines if line and not line.startswith(">")]


def _says_full(line: str) -> bool:
    return _NIX_NOTE in line or _ENOSPC in line


def disk_full(status: BuildStatus, error_msg: str) -> bool:
    """Does Nix's answer to a failed build say the builder's disk is full?"""
    if status.succeeded:
        return False
    return any(_says_full(line) for line in _nix_lines(error_msg))


def disk_full_error(machine: str, error_msg: str) -> str:
    """The reason a builder is backed off, with the line of Nix's error that says so."""
    lines = _nix_lines(error_msg)
    said = [line for line in lines if _says_full(line)]
    return f"{machine}'s disk is full (Nix: {(said or lines or ['no error text'])[0]})"


@dataclass(frozen=True, slots=True)
class Cleanup:
    """How the deletion of what a build or copy left half-written went: ``said`` is what to
    add to its reason (``; its partial outputs were deleted``, or why they stay)."""

    deleted: bool
    said: str


async def remove_partial(link: object, paths: Sequence[str], what: str = "outputs") -> Cleanup:
    """Delete what a build (or a copy of its ``what``) left of ``paths`` on ``link``'s machine:
    how it went, or why the paths stay (a link that cannot run commands)."""
    if not isinstance(link, PartialRemover):
        return Cleanup(False, f"; its partial {what} stay there (this link cannot delete them)")
    try:
        await link.remove_partial(paths)
    except OffloadError as exc:
        return Cleanup(False, f"; its partial {what} stay there: {exc.message}")
    return Cleanup(True, f"; its partial {what} were deleted")
