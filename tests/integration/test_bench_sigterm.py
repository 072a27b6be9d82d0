"""``bench/run.py`` stopped by SIGTERM stops its fleet as Ctrl-C does: killed during a session's
benchmark, it left the fleet's sshd and the builds under way running, and its scratch
directory under /tmp, behind."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

from offload.fleet import fleet_down
from tests.helpers import processes

ROOT = Path(__file__).resolve().parents[2]


def _mentioning(text: str) -> list[str]:
    """The command lines of live processes that name ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                found.append(cmdline)
    return found


def test_sigterm_stops_the_bench_s_fleet_and_keeps_partial_results(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    argv = [sys.executable, "bench/run.py", "--only", "overhead", "--reps", "1", "--out", str(out)]
    bench = processes.start(argv, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    fleet_dir = None
    try:
        line = processes.read_until(bench, "starting the fleet in ", seen)
        fleet_dir = Path(line.split("starting the fleet in ", 1)[1].strip())
        processes.read_until(bench, "overhead", seen)  # the fleet is up, a build under way
        assert _mentioning(str(fleet_dir)), "".join(seen)
        bench.send_signal(signal.SIGTERM)
        _, said = bench.communicate(timeout=120)
        assert bench.returncode == 130, said
        assert "interrupted; the fleet is stopped" in said
        assert _mentioning(str(fleet_dir)) == []
        assert not fleet_dir.parent.exists()
        assert out.with_name(out.name + ".partial").exists()
    finally:
        processes.stop(bench)
        if fleet_dir is not None and fleet_dir.exists():  # the test failed: not left running
            fleet_down(fleet_dir, purge=True)
            shutil.rmtree(fleet_dir.parent, ignore_errors=True)
