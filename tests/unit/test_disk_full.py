"""Reading Nix's answer to a failed build as a builder's full disk, and deleting what it left."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from offload.errors import SshError
from offload.protocol.serve import BuildStatus
from offload.scheduler.run.disk import Cleanup, disk_full, disk_full_error, remove_partial

# What Nix 2.8's nix-store --serve answered on a fleet member whose store was a full tmpfs.
NOTE = (
    "builder for '/nix/store/m8ky2nxmlfcb4h4a2pwbcvvk2nf7vfxh-big.drv' failed with exit code 1\n"
    "note: build failure may have been caused by lack of free disk space"
)


def test_nix_note_or_enospc_in_its_answer_is_a_full_disk():
    assert disk_full(BuildStatus.TRANSIENT_FAILURE, NOTE)
    assert disk_full(BuildStatus.MISC_FAILURE, "writing to file: No space left on device")


def test_other_failures_are_the_derivations_own():
    plain = "builder for '/nix/store/x.drv' failed with exit code 1"
    assert not disk_full(BuildStatus.PERMANENT_FAILURE, plain)
    assert not disk_full(BuildStatus.TIMED_OUT, "timed out after 5 seconds")
    assert not disk_full(BuildStatus.BUILT, "No space left on device")


def test_the_builds_own_lines_nix_quotes_are_not_read():
    # The daemon's answer (ssh-ng://) quotes the build's last lines behind "> "; Nix's own
    # note comes after them.
    quoted = (
        "builder for '/nix/store/x.drv' failed with exit code 1;\n"
        "last 2 log lines:\n"
        "> cp: error writing 't': No space left on device\n"
        "> note: build failure may have been caused by lack of free disk space\n"
        "For full logs, run '\x1b[1mnix-store -l /nix/store/x.drv\x1b[0m'."
    )
    assert not disk_full(BuildStatus.PERMANENT_FAILURE, quoted)
    with_note = quoted + "\nnote: build failure may have been caused by lack of free disk space"
    assert disk_full(BuildStatus.TRANSIENT_FAILURE, with_note)
    assert disk_full_error("fast", with_note).endswith("lack of free disk space)")


def test_the_reason_quotes_the_line_that_says_so():
    assert disk_full_error("fast", NOTE) == (
        "fast's disk is full "
        "(Nix: note: build failure may have been caused by lack of free disk space)"
    )
    assert disk_full_error("slow", "") == "slow's disk is full (Nix: no error text)"


class Remover:
    def __init__(self, error: SshError | None = None) -> None:
        self.asked: list[list[str]] = []
        self.error = error

    async def remove_partial(self, paths: Sequence[str]) -> None:
        self.asked.append(list(paths))
        if self.error is not None:
            raise self.error


def test_partial_outputs_are_deleted_or_said_to_stay():
    remover = Remover()
    cleanup = asyncio.run(remove_partial(remover, ["/nix/store/a-out", "/nix/store/a-dev"]))
    assert cleanup == Cleanup(True, "; its partial outputs were deleted")
    assert remover.asked == [["/nix/store/a-out", "/nix/store/a-dev"]]
    refused = Remover(SshError("builder 'fast' runs only the serve program"))
    cleanup = asyncio.run(remove_partial(refused, ["/nix/store/a-out"]))
    assert not cleanup.deleted
    assert cleanup.said == (
        "; its partial outputs stay there: builder 'fast' runs only the serve program"
    )
    cleanup = asyncio.run(remove_partial(object(), ["/nix/store/a-out"]))
    assert cleanup == Cleanup(
        False, "; its partial outputs stay there (this link cannot delete them)"
    )
