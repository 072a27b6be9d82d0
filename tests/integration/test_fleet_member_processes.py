"""The tests' own reading of a fleet member's processes (``tests.helpers.fleets``), against
what any process on the host may be named or given: it must read past all of it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers.fleets import member_processes


def test_member_processes_reads_past_a_command_line_not_in_utf_8(fleet):
    # Any process on the host may have one (another session's test, a user's file name): the
    # helper decoded each strictly and raised UnicodeDecodeError, failing the test calling it.
    argv = [sys.executable.encode(), b"-c", b"import time; time.sleep(60)", b"caf\xe9"]
    other = subprocess.Popen(argv)
    try:
        found = member_processes(fleet.member("fast"))
    finally:
        other.kill()
        other.wait()
    assert fleet.member("fast").pid in [pid for pid, _ in found]


def test_member_processes_reads_past_a_process_name_not_in_utf_8(fleet):
    # /proc/PID/stat holds the process's name (comm), which any process may set to any bytes
    # (prctl PR_SET_NAME, or an executable's file name): read strictly, it raised
    # UnicodeDecodeError as the command line did, failing the test calling the helper.
    name = "import ctypes; ctypes.CDLL(None).prctl(15, b'caf\\xe9', 0, 0, 0)"
    argv = [sys.executable, "-c", f"{name}; print(flush=True); import time; time.sleep(60)"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE) as other:
        try:
            assert other.stdout is not None
            assert other.stdout.readline() == b"\n"  # its name is set
            assert Path(f"/proc/{other.pid}/comm").read_bytes() == b"caf\xe9\n"
            found = member_processes(fleet.member("fast"))
        finally:
            other.kill()
    assert fleet.member("fast").pid in [pid for pid, _ in found]
