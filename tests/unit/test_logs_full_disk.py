"""Build logs on a disk that fills: nothing half-written left, and no error kept per line that
could not be written. A file size limit (RLIMIT_FSIZE, SIGXFSZ ignored) stands in for the
full disk, in a process of its own."""

from __future__ import annotations

import errno
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from offload.errors import OffloadError
from offload.logs import BuildLogs

_LIMITED = """
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
"""


def _run(tmp_path: Path, body: str) -> str:
    code = _LIMITED + textwrap.dedent(body)
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_log_copied_for_nix_that_does_not_fit_leaves_no_temporary(tmp_path: Path) -> None:
    (tmp_path / "drvs").mkdir()
    said = _run(
        tmp_path,
        """
        import os
        from pathlib import Path
        from offload.nix_log_copies import keep_for_nix
        log = Path("big.log")
        with log.open("wb") as out:  # random: bzip2 cannot make it small
            out.write(os.urandom(150_000))
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
        kept = keep_for_nix("/nix/store/abcdef-x.drv", log, Path("drvs/x.bz2"), started=1.0)
        print(kept, sorted(os.listdir("drvs")))
        """,
    )
    assert said.split() == ["False", "[]"]  # a partial '.x.bz2.<pid>' stayed


def test_of_the_writes_that_fail_only_the_first_error_is_kept(tmp_path: Path) -> None:
    # Each was kept, with its frames: 400 MiB for 300,000 lines on a full disk. The first is
    # the one close raises. (Told the recorder's own way, in its thread's place: how much a
    # process holds at its peak depends on how far that thread lags, not on this.)
    recorder = BuildLogs(tmp_path / "logs").recorder()

    def full() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    for _ in range(1000):
        recorder._guarded(full)
    assert len(recorder._errors) == 1
    with pytest.raises(OffloadError, match="No space left on device"):
        recorder.close()


def test_a_log_the_disk_could_not_take_whole_is_not_kept_cut_short(tmp_path: Path) -> None:
    # Kept, `offload log` showed the part written (nothing, at a full disk) as the build's
    # whole log, exit 0. A build's log that fits stays.
    said = _run(
        tmp_path,
        """
        from offload.logs import BuildLogs
        logs = BuildLogs(__import__("pathlib").Path("logs"))
        recorder = logs.recorder()
        recorder.write("/nix/store/abcdef-small.drv", "fast", "fits")
        for n in range(20_000):
            recorder.write("/nix/store/abcdef-big.drv", "fast", f"line {n} " + "x" * 20)
        try:
            recorder.close()
        except Exception as exc:
            print("error:", exc)
        small = logs.read("/nix/store/abcdef-small.drv").strip()
        print(logs.latest("/nix/store/abcdef-big.drv"), small)
        """,
    )
    assert said.startswith("error: cannot write build logs in logs: [Errno 27] File too large")
    assert said.splitlines()[-1] == "None fits"
