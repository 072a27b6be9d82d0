"""Kept build logs of a size that must not be read whole (``offload.logs``), and `offload log`
where it prints one: real files in tmp_path."""

from __future__ import annotations

import bz2
import contextlib
import io
from pathlib import Path

import pytest
from typing_extensions import override

from offload.cli import log as log_cli
from offload.errors import OffloadError
from offload.logs import BuildLogs
from offload.nix_log_copies import keep_for_nix

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
    assert keep_for_nix(DRV, log, target, started=1000.0)
    assert bz2.decompress(target.read_bytes()) == log.read_bytes()
    assert target.stat().st_mtime == 1000.0


class _Terminal(io.StringIO):
    @override
    def isatty(self) -> bool:
        return True


def test_a_log_on_a_terminal_keeps_its_colours_and_nothing_else(tmp_path: Path) -> None:
    # Printed as kept: a build (or the builder it ran on) could set the clipboard (OSC 52),
    # the window's title, clear the screen; nix log's pager (less -R) lets colours only through.
    logs = BuildLogs(tmp_path)
    with logs.open(DRV, "fast") as writer:
        writer.write(
            "\x1b]52;c;cm0gLXJmIH4=\x07\x1b]0;fake title\x07\x1b[2J\u009b31m\x1b[1mbold\x1b[0m"
        )
    out = _Terminal()
    assert log_cli.show_log(DRV, logs=logs, out=out) == 0
    assert out.getvalue() == "\x1b[1mbold\x1b[0m\n"


def test_a_title_never_ended_hides_no_line_after_it(tmp_path: Path) -> None:
    # A build cut off mid-escape (or one that never ends its OSC) ends the string with its line:
    # the log's next lines were all shown as nothing on a terminal.
    logs = BuildLogs(tmp_path)
    with logs.open(DRV, "fast") as writer:
        writer.write("one \x1b]0;title never ended")
        writer.write("two \x1b[31mred\x1b[0m")
    out = _Terminal()
    assert log_cli.show_log(DRV, logs=logs, out=out) == 0
    assert out.getvalue() == "one \ntwo \x1b[31mred\x1b[0m\n"


def test_a_log_that_cannot_be_written_is_one_error_line(tmp_path: Path) -> None:
    logs = BuildLogs(tmp_path)
    with logs.open(DRV, "fast") as writer:
        writer.write("line")
    full = Path("/dev/full").open("w")  # noqa: SIM115 - closed below, its failure expected
    try:
        with pytest.raises(OffloadError) as failed:
            log_cli.show_log(DRV, logs=logs, out=full)
    finally:
        with contextlib.suppress(OSError):  # what is still buffered fails again
            full.close()
    assert failed.value.message == "cannot write the log to /dev/full: No space left on device"


def test_a_log_gone_between_its_look_up_and_its_read_is_looked_up_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Renamed to .stopped.log (its copy stopped) or pruned just after the look: "cannot use
    # ...log: No such file or directory", with a hint to check the path given.
    logs = BuildLogs(tmp_path)
    with logs.open(DRV, "fast") as writer:
        writer.write("the older one")
    with logs.open(DRV, "slow") as writer:
        writer.write("the newest")
    looked = BuildLogs.kept

    def gone_once(self: BuildLogs, drv: str, machine: str | None = None) -> Path:
        path = looked(self, drv, machine)
        if "slow" in path.name:
            path.unlink()  # as the look returns
        return path

    monkeypatch.setattr(BuildLogs, "kept", gone_once)
    assert list(logs.lines(DRV)) == ["the older one\n"]
