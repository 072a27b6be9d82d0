"""Signals while Nix evaluates (real nix-instantiate): the first stops ``offload build``,
later ones are ignored, and the exit status is the first one's; no evaluator is left behind.

The expression reads a FIFO the test holds open without writing, so Nix is evaluating, and
stays so, from the moment the test's open returns (opening a FIFO for writing waits for its
reader): no sleep stands in for that. A second signal is sent once the first has been
delivered (/proc's pending mask), so that two of one number are two, not one.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import processes
from tests.helpers.offload_run import wait_for

WAIT = 30.0  # generous for a loaded machine; reached only when the behaviour is broken


class _Held:
    """A FIFO opened for writing (in a thread: that open waits for Nix) and held open."""

    def __init__(self, fifo: Path) -> None:
        self.opened = threading.Event()
        self._release = threading.Event()
        self._thread = threading.Thread(target=self._hold, args=(fifo,), daemon=True)
        self._thread.start()

    def _hold(self, fifo: Path) -> None:
        with fifo.open("w"):
            self.opened.set()
            self._release.wait()

    def release(self, fifo: Path) -> None:
        """Let Nix read an end (and a writer no Nix came for go)."""
        self._release.set()
        if not self.opened.is_set():
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        self._thread.join(WAIT)


@pytest.fixture
def evaluating(tmp_path: Path) -> Iterator[tuple[list[str], dict[str, str], _Held]]:
    """``offload build``'s argv (without the flags a test adds), its env, and the held FIFO
    its expression reads."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    expr = (
        f'derivation {{ name = "slow-eval-{uuid.uuid4().hex[:12]}"; '
        f'system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; '
        f"value = builtins.readFile {fifo}; }}"
    )
    argv = [sys.executable, "-m", "offload", "build", "--expr", expr, "--builders", ""]
    env = {**os.environ, "OFFLOAD_STATE_DIR": str(tmp_path / "state")}
    env["NIX_CONFIG"] = "substituters =\n"
    held = _Held(fifo)
    try:
        yield argv, env, held
    finally:
        held.release(fifo)


def _delivered(pid: int, signum: int) -> bool:
    """Whether ``signum`` sent to process ``pid`` is no longer pending there."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    shared = next(line for line in status.splitlines() if line.startswith("ShdPnd:"))
    return not int(shared.split()[1], 16) >> (signum - 1) & 1


def _stopped(proc: subprocess.Popen[str], *signals: int) -> tuple[int, str]:
    """Send ``signals`` one after another, each once the one before has been delivered (two
    of one number still pending would be one); the exit status and stderr. Nothing of the
    run's process group (its evaluator) may outlive it."""
    try:
        for signum in signals:
            proc.send_signal(signum)
            wait_for(functools.partial(_delivered, proc.pid, signum), WAIT, "its delivery")
        _, err = proc.communicate(timeout=WAIT)
        with pytest.raises(ProcessLookupError):  # the group is gone: no evaluator left
            os.killpg(proc.pid, 0)
    finally:
        processes.stop(proc)
    return proc.returncode, err


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM])
def test_a_second_signal_while_nix_evaluates_outside_the_run_is_ignored(
    evaluating: tuple[list[str], dict[str, str], _Held], tmp_path: Path, second: int
) -> None:
    """--dry-run evaluates before any event loop: a Ctrl-C there is raised where Python is,
    and the second one, a SIGTERM, was taken for the first: the run exited 143."""
    argv, env, held = evaluating
    proc = processes.start(
        [*argv, "--dry-run"], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    assert held.opened.wait(WAIT), "Nix never read the FIFO"
    status, err = _stopped(proc, signal.SIGINT, second)
    assert status == 130, err  # the first one's
    assert err == "error: interrupted\n", err


def _serving(pid: int) -> bool:
    """Whether ``pid`` has a child ``nix-store --serve`` (its local session): started as the
    run asks for the roots, so the run waits for the evaluation from then on."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"--serve" in cmdline:
            return True
    return False


@pytest.mark.parametrize("first", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_the_run_waits_for_nix_stops_the_evaluator(
    evaluating: tuple[list[str], dict[str, str], _Held], tmp_path: Path, first: int
) -> None:
    """A build evaluates while its sessions open (in a thread of the run): a signal then (a
    supervisor's SIGTERM, a Ctrl-C sent to offload alone) waited for Nix to finish evaluating
    (here, for ever) before the run could end."""
    argv, env, held = evaluating
    proc = processes.start(
        [*argv, "--no-out-link"], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    assert held.opened.wait(WAIT), "Nix never read the FIFO"
    wait_for(lambda: _serving(proc.pid), WAIT, "the run's local session")
    status, err = _stopped(proc, first)
    assert status == 128 + first, err
    assert err == "error: interrupted\n", err
