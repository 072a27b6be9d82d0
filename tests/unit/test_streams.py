"""``offload.streams`` against real descriptors: a pipe whose reader has gone and a terminal
that was closed (a pty whose other side is gone, as after SIGHUP) end the lines, not the
command; any other failure still raises."""

from __future__ import annotations

import os
import pty
from pathlib import Path

import pytest

from offload.streams import ForgivingStderr


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


def test_other_failures_still_raise() -> None:
    read, write = os.pipe()
    stream = _stream(read)  # the read end: writing to it is EBADF, not a reader gone
    with pytest.raises(OSError, match="Bad file descriptor"):
        stream.write("x\n")
    os.close(write)
    with pytest.raises(OSError):
        stream.close()
