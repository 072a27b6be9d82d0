"""Build logs on a disk that fills: nothing half-written left, and memory that does not grow
with the lines that could not be written. A file size limit (RLIMIT_FSIZE, SIGXFSZ ignored)
stands in for the full disk, in a process of its own."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

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
        from offload.logs import keep_for_nix
        log = Path("big.log")
        with log.open("wb") as out:  # random: bzip2 cannot make it small
            out.write(os.urandom(150_000))
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
        kept = keep_for_nix("/nix/store/abcdef-x.drv", "fast", log, Path("drvs/x.bz2"), started=1.0)
        print(kept, sorted(os.listdir("drvs")))
        """,
    )
    assert said.split() == ["False", "[]"]  # a partial '.x.bz2.<pid>' stayed


def test_lines_that_cannot_be_written_do_not_pile_up_in_memory(tmp_path: Path) -> None:
    said = _run(
        tmp_path,
        """
        from pathlib import Path
        from offload.errors import OffloadError
        from offload.logs import BuildLogs
        recorder = BuildLogs(Path("logs")).recorder()
        for i in range(300_000):
            recorder.write("/nix/store/abcdef-x.drv", "fast", "x" * 100)
        try:
            recorder.close()
        except OffloadError as exc:
            print("refused")
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
        """,
    )
    refused, peak_mib = said.split()
    assert refused == "refused"
    # An exception held per line that failed: 400 MiB here; about 60 MiB without them.
    assert int(peak_mib) < 150, peak_mib
