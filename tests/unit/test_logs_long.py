"""Kept build logs of a size that must not be read whole (``offload.logs``): real files in
tmp_path."""

from __future__ import annotations

import bz2
from pathlib import Path

from offload.logs import BuildLogs, keep_for_nix

DRV = "/nix/store/" + "a" * 32 + "-long.drv"


def test_a_log_without_newlines_is_read_in_pieces(tmp_path: Path) -> None:
    # A progress bar of \r's and no newline, 210 MB: read as one line, 640 MB held at once.
    logs = BuildLogs(tmp_path)
    # "é" is two bytes: one of them is cut in two by the 1 MiB pieces (2**20 is even, so
    # the leading "x" puts every "é" across an odd offset).
    body = "x" + "é" * (3 * 2**20)
    with logs.open(DRV, "fast") as writer:
        writer.write(body)
    pieces = list(logs.lines(DRV))
    assert len(pieces) > 3
    assert max(len(p.encode()) for p in pieces) <= 2**20
    assert "".join(pieces).rstrip("\n") == body  # no U+FFFD where a character was cut


def test_a_long_log_is_copied_for_nix_whole(tmp_path: Path) -> None:
    log = tmp_path / "long.log"
    log.write_bytes(b"line\r" * (3 * 2**20) + b"end\n")
    target = tmp_path / "nix" / "log"
    assert keep_for_nix(DRV, "fast", log, target, started=1000.0)
    assert bz2.decompress(target.read_bytes()) == log.read_bytes()
    assert target.stat().st_mtime == 1000.0
