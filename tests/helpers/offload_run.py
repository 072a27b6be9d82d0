"""``offload build`` run as a subprocess against a fleet, and what its ``--json`` events say.

A run that waits on its own (``offload``) returns when offload does; one that runs in the
background (``start_offload``) is a process group of its own, which ``processes.stop`` kills.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from offload.fleet import Fleet
from offload.hook import coordinator
from offload.procfs import running
from offload.transport.ssh_options import Keepalive
from tests.helpers import processes

# A keepalive a user gives in NIX_SSHOPTS (ssh takes its values first, offload reads them back):
# ssh gives a silent builder up 4 s after its last word, not 12 s; a session's end after 3 s of
# silence, the connection gone, is a builder that stopped answering. A live member answers
# ssh's asks within milliseconds, even on a loaded machine: four missed in a row is one stopped.
SHORT_KEEPALIVE = Keepalive(1, 3)


def offload_env(fleet: Fleet, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = fleet.env()
    # offload substitutes from the local caches first: never let it reach the default one.
    env["NIX_CONFIG"] = env.get("NIX_CONFIG", "") + "\nsubstituters =\n"
    env["OFFLOAD_STATE_DIR"] = str(tmp_path / "state")
    env.update(extra)
    return env


def offload_argv(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "offload", "build", *map(str, args)]


def offload(
    fleet: Fleet,
    tmp_path: Path,
    *args: str | Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        offload_argv(*args),
        env=dict(env) if env is not None else offload_env(fleet, tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def with_keepalive(
    env: Mapping[str, str], keepalive: Keepalive = SHORT_KEEPALIVE
) -> dict[str, str]:
    """``env`` with ``keepalive``'s ssh options first in its NIX_SSHOPTS, as a user gives them."""
    sshopts = " ".join([*keepalive.options(), env.get("NIX_SSHOPTS", "")])
    return {**env, "NIX_SSHOPTS": sshopts.strip()}


def start_offload(
    fleet: Fleet, tmp_path: Path, *args: str | Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[str]:
    """``offload build ARGS`` in the background (``env``: default ``offload_env``), its stdout
    and stderr piped as text."""
    proc: subprocess.Popen[str] = processes.start(
        offload_argv(*args),
        env=dict(env) if env is not None else offload_env(fleet, tmp_path),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc


def events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def finished(stdout: str) -> list[dict[str, Any]]:
    return [e for e in events(stdout) if e["event"] == "job_finished"]


def built_on(stdout: str) -> dict[str, str]:
    """Derivation name -> the machine that built it (built or fetched)."""
    return {e["name"]: e["machine"] for e in finished(stdout) if e["status"] == "built"}


def run_outputs(stdout: str) -> list[str]:
    (last,) = [e for e in events(stdout) if e["event"] == "run_finished"]
    return list(last["outputs"])


def peak_running(log: Path) -> tuple[int, int]:
    """(stamps, most builds running at once) from a log of ``start T`` / ``end T`` lines."""
    stamps = [line.split() for line in log.read_text().splitlines()]
    # At equal times an end frees its slot before a start takes it.
    timeline = sorted((float(t), 0 if kind == "end" else 1) for kind, t in stamps)
    running = peak = 0
    for _, is_start in timeline:
        running += 1 if is_start else -1
        peak = max(peak, running)
    return len(stamps), peak


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a real condition until it holds or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def wait_for_marker(marker: Path, proc: subprocess.Popen[str], timeout: float = 30) -> str:
    """The marker's content once a builder wrote it; fails early if the run ended first."""

    def ready() -> bool:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"offload ended (rc {proc.returncode}) before the marker: {err}\n{out}")
        return marker.exists()

    wait_for(ready, timeout, f"marker {marker}")
    return marker.read_text().strip()


def stop_coordinators(state: Path, timeout: float = 30) -> None:
    """Stop every hook coordinator serving ``state`` (the ones a test's hooks started) and check
    that each has exited."""
    for pid in coordinator.stop_coordinators(state, timeout):
        assert not running(pid), f"coordinator {pid} did not exit"


def second_while_first(
    first: subprocess.Popen[str],
    started: Callable[[], bool],
    what: str,
    second: Callable[[], subprocess.Popen[str]],
) -> None:
    """``second`` started once ``first`` has ``started`` (``what``: said if it never does),
    and both waited for, each to succeed; neither left running whatever happens."""
    try:
        wait_for(started, 120, what)
        later = second()
        try:
            _, err = later.communicate(timeout=180)
            assert later.returncode == 0, err
        finally:
            processes.stop(later)
        _, err = first.communicate(timeout=180)
        assert first.returncode == 0, err
    finally:
        processes.stop(first)
