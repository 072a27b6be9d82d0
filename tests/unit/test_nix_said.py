"""The local store's lines while a run plans: as they come, its fatal error said once."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import cast

import pytest

from offload.build.nix_said import heard
from offload.errors import RemoteError
from offload.protocol.store import StoreClient

FATAL = "error: unable to download 'http://127.0.0.1:9/abc.narinfo': Couldn't connect (7)"


class _Session:
    name = "local"
    on_log: Callable[[str], None] | None = None


def _said(lines: list[str], error: RemoteError | None = None) -> tuple[list[str], list[str]]:
    """(what was said, what was read) of ``lines``, the block ending with ``error``."""
    said: list[str] = []
    read: list[str] = []
    session = _Session()
    ends = pytest.raises(RemoteError) if error else contextlib.nullcontext()
    with ends, heard(cast("StoreClient", session), said.append, read.append):
        for line in lines:
            assert session.on_log is not None
            session.on_log(line)
        if error is not None:
            raise error
    return said, read


def _local_error(text: str, peer: str = "local") -> RemoteError:
    error = RemoteError(f"{peer}: {text}")
    error.peer = peer
    return error


def test_the_error_the_session_ends_with_is_not_said_again() -> None:
    lines = ["warning: error: ...; retrying in 250 ms", FATAL]
    said, read = _said(lines, _local_error(FATAL.removeprefix("error: ")))
    assert said == lines[:1]
    assert read == said  # the run's error: no cache left out


def test_an_error_nix_goes_on_after_is_said_in_its_place() -> None:
    lines = [FATAL, "  continued", "warning: something else"]
    assert _said(lines) == (lines, lines)


@pytest.mark.parametrize("peer", ["local", "b1"])
def test_an_error_held_at_the_end_is_said_unless_the_session_s_own(peer: str) -> None:
    assert _said([FATAL])[0] == [FATAL]
    other = _said([FATAL], _local_error("something else"))[0]
    assert other == [FATAL]
    by_peer = _said([FATAL], _local_error(FATAL.removeprefix("error: "), peer))[0]
    assert by_peer == ([] if peer == "local" else [FATAL])


def test_an_error_with_blank_lines_is_one_block() -> None:
    # An HTTP error quotes its response body after blank lines, which Nix leaves unindented.
    lines = [FATAL, "", "       response body:", "", "       <html>down</html>"]
    joined = " ".join(" ".join(line.split()) for line in lines).removeprefix("error:").strip()
    said, read = _said(lines, _local_error(joined))
    assert (said, read) == ([], [])
    assert _said([*lines, "warning: went on"])[0] == [*lines, "warning: went on"]


def test_a_substitute_that_failed_is_said_as_one_not_as_a_failed_build() -> None:
    # A cache's narinfo without its NAR: Nix's worker said "build of '<output>' failed", and
    # the run then built it, as nix-build does without that line.
    out = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-plb"
    lines = [
        "error: file 'nar/x.nar.xz' does not exist in binary cache 'file:///c'",
        f"warning: build of '{out}', '{out}-dev' failed",
        "warning: build of '/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-plb.drv' failed",
    ]
    said, read = _said(lines)
    assert said == [
        lines[0],
        f"warning: substituting '{out}', '{out}-dev' from a binary cache failed: built instead",
        lines[2],  # a derivation's build: Nix's words stand
    ]
    assert read == lines  # the caches' faults are read in Nix's words
