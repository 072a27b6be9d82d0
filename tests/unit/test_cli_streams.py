"""What the command line does with the streams it reads and writes: a reader gone from its
stdout ends it quietly (141, as a shell's pipeline expects); a name the locale cannot encode is
written escaped; a program's output that is not UTF-8 is read, not fatal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from offload.process import run

SAMPLE = Path(__file__).resolve().parents[2] / "src" / "offload" / "data" / "sample.json"


def test_a_closed_stdout_ends_quietly() -> None:
    reader, writer = os.pipe()
    os.close(reader)  # nobody will read: the first write fails with EPIPE
    try:
        done = subprocess.run(
            [sys.executable, "-m", "offload", "simulate", str(SAMPLE), "--json"],
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
    finally:
        os.close(writer)
    assert done.returncode == 141
    assert done.stderr == ""


def test_a_name_the_locale_cannot_encode_is_written_escaped(tmp_path: Path) -> None:
    # An ISO-8859-1 or ASCII locale: a machine named "ü∞" made every listing an internal error.
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "OFFLOAD_STATE_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "offload", "machines", "--builders", "ssh://\u00fc\u221e"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "\\xfc\\u221e  " in done.stdout


def test_output_that_is_not_utf8_is_read_not_fatal() -> None:
    done = run(["printf", r"caf\351 \377"], check=False)
    assert done.returncode == 0
    assert done.stdout == "caf\ufffd \ufffd"
