"""``@`` files read with bounds (config/machines/files.py): size, time, and what is shown."""

from __future__ import annotations

import os
import threading
import time

import pytest

from offload.config.machines import parse_machines, read_machines, read_text_file
from offload.config.machines.files import MAX_BYTES
from offload.errors import ConfigError

SYSTEM = "x86_64-linux"


def test_dev_zero_is_refused_at_the_cap_not_read_forever():
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"^f:1: machines file /dev/zero is larger than 4 MiB"):
        parse_machines("@/dev/zero", source="f", system=SYSTEM)
    assert time.monotonic() - started < 5


def test_a_large_regular_file_is_refused_before_it_is_read(tmp_path):
    big = tmp_path / "big"
    with big.open("wb") as out:
        out.truncate(MAX_BYTES + 1)
    with pytest.raises(ConfigError, match="larger than 4 MiB"):
        read_text_file(str(big))
    (tmp_path / "ok").write_bytes(b"m\n" * (MAX_BYTES // 2))
    assert read_text_file(str(tmp_path / "ok")) == "m\n" * (MAX_BYTES // 2)


def test_a_fifo_nobody_writes_to_times_out(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"gave no end of file within 0.3 s") as info:
        read_text_file(str(fifo), timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 5
    assert "FIFO" in (info.value.hint or "")


def test_a_pipe_with_a_writer_is_read_like_process_substitution(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def write() -> None:
        with fifo.open("w") as out:
            out.write("nx-p1.invalid\n")
            out.flush()
            out.write("nx-p2.invalid - - 2\n")

    writer = threading.Thread(target=write)
    writer.start()
    try:
        machines, _ = parse_machines(f"@{fifo}", source="f", system=SYSTEM)
    finally:
        writer.join()
    assert [(m.host, m.max_jobs) for m in machines] == [("nx-p1.invalid", 1), ("nx-p2.invalid", 2)]


def test_a_directory_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="Is a directory"):
        read_text_file(str(tmp_path))


def test_binary_junk_is_shown_escaped_never_raw(tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x1b]0;pwned\x07\xff - - \x1b[2Jx\n")
    reading = read_machines(f"@{junk}", source="f", system=SYSTEM)
    (error,) = reading.errors
    assert error.message == (
        f"{junk}:1: column 4 (maxJobs): '\\x1b[2Jx' is not a whole number of jobs"
    )
    assert all(c.isprintable() for c in error.message)
    # A line Nix takes keeps its bytes for ssh, and its name is printable.
    junk.write_bytes(b"nx-\xff\x1b.invalid\n")
    (m,) = parse_machines(f"@{junk}", source="f", system=SYSTEM)[0]
    assert os.fsencode(m.host or "") == b"nx-\xff\x1b.invalid"
    assert m.name == "nx-\\xff\\x1b.invalid"
