"""``offload.streams`` against real descriptors: a pipe whose reader has gone and a terminal
that was closed (a pty whose other side is gone, as after SIGHUP) end the lines, not the
command; stderr forgives any other failure too (a full disk), and stdout says its own."""

from __future__ import annotations

import io
import os
import pty
from pathlib import Path
from typing import cast

import pytest

from offload.streams import ForgivingStderr, SaidStdout, StdoutError


def _stream(fd: int) -> ForgivingStderr:
    return ForgivingStderr(open(fd, "wb"), encoding="utf-8", line_buffering=True)


def test_a_closed_terminal_is_a_reader_gone() -> None:
    main, other = pty.openpty()
    os.close(main)  # the terminal is closed: writes to its other side fail with EIO
    with pytest.raises(OSError, match="Input/output error"):
        os.write(other, b"x")
    stream = _stream(other)
    assert stream.write("after the hang-up\n") == len("after the hang-up\n")
    stream.flush()
    assert str(Path(f"/proc/self/fd/{other}").readlink()) == os.devnull  # later writes go nowhere
    stream.close()


def test_a_pipe_whose_reader_has_gone_is_a_reader_gone() -> None:
    read, write = os.pipe()
    os.close(read)
    stream = _stream(write)
    stream.write("into a pipe nobody reads\n")
    stream.flush()
    assert str(Path(f"/proc/self/fd/{write}").readlink()) == os.devnull
    stream.close()


def test_stderr_forgives_a_full_disk_and_any_other_failure() -> None:
    # /dev/full: ENOSPC. A run whose stderr went to a full disk stopped before it began.
    full = _stream(os.open("/dev/full", os.O_WRONLY))
    assert full.write("a line\n") == len("a line\n")
    full.flush()
    full.close()
    read, write = os.pipe()
    stream = _stream(read)  # the read end: writing to it is EBADF
    assert stream.write("x\n") == 2
    os.close(write)
    stream.close()


def test_stdout_that_cannot_be_written_says_so_as_its_own() -> None:
    stdout = SaidStdout(Path("/dev/full").open("wb"), encoding="utf-8")  # noqa: SIM115
    stdout.write("held in the buffer\n")
    with pytest.raises(StdoutError) as raised:
        stdout.flush()
    assert raised.value.strerror == "No space left on device"
    read, write = os.pipe()
    os.close(read)
    gone = SaidStdout(open(write, "wb"), encoding="utf-8", line_buffering=True)  # noqa: SIM115, PTH123
    with pytest.raises(BrokenPipeError):  # a reader gone is not stdout's failure: 141
        gone.write("x\n")
    for stream in (stdout, gone):
        cast(
            "io.BufferedWriter", stream.buffer
        ).raw.close()  # what they hold cannot be written: not at garbage collection
