"""`offload-hook` under real Nix 2.8 with no builders at all (``--builders ''``).

The hook answers ``decline-permanently``, as build-remote does, and Nix then closes its stdin
and kills the hook process, so the coordinator serving it finds the hook gone when it would
send its exit code: that is Nix being done with its hook, not a failure for
``hook-coordinator.log``. Nor is a hook gone before the coordinator acknowledged its hello
(a real coordinator, no Nix: a hook killed as Nix stops).
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from offload.hook.client import send_hello
from offload.hook.coordinator import stop_coordinators
from offload.hook.rendezvous import COORDINATOR_LOG, GREETING
from tests.helpers.hook_runs import HOOK
from tests.helpers.nix_files import nix_file

pytestmark = pytest.mark.usefixtures("coordinators_stopped")


def _nix_build(file: Path, state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OFFLOAD_STATE_DIR": str(state)}
    return subprocess.run(
        ["nix-build", str(file), "--no-out-link", "--option", "build-hook", HOOK,
         "--option", "substituters", "", "--builders", "", *args],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_no_builders_builds_locally_and_logs_no_failure(tmp_path: Path) -> None:
    state = tmp_path / "state"
    file = nix_file(
        tmp_path, '[ (mk "here" "echo built > $out" {}) (mk "too" "echo t > $out" {}) ]'
    )
    done = _nix_build(file, state, "-j1")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.split()) == 2
    # -j0: nothing can build them; Nix says so in its own words, and the hook logs nothing.
    again = nix_file(tmp_path, '[ (mk "nowhere" "echo n > $out" {}) ]', name="again.nix")
    refused = _nix_build(again, state, "-j0")
    assert refused.returncode == 1
    assert "unable to start any build" in refused.stderr
    log = state / COORDINATOR_LOG
    assert log.is_file()  # the coordinator served these hooks
    assert "a hook failed" not in log.read_text()


@pytest.mark.parametrize("greeted", [True, False], ids=["after-the-greeting", "before-it"])
def test_a_hook_gone_before_its_handover_is_taken_logs_no_failure(
    tmp_path: Path, greeted: bool
) -> None:
    # Nix kills its hooks as it stops (Ctrl-C, another build failing): one may be gone by the
    # time the coordinator acknowledges its hello (or greets it). The soak campaign saw
    # "offload coordinator: a hook failed: BrokenPipeError" in the log for that, a line meant
    # for crashes.
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    path = state / "hook-test.sock"
    ready_read, ready_write = os.pipe()
    with (state / COORDINATOR_LOG).open("ab") as log:
        coordinator = subprocess.Popen(
            [sys.executable, "-m", "offload.hook.coordinator", str(state), str(path),
             str(ready_write)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
            pass_fds=(ready_write,), start_new_session=True,
        )  # fmt: skip
    os.close(ready_write)
    try:
        with os.fdopen(ready_read, "rb") as ready:
            assert ready.readline() == b"ready\n"
        _hello_then_gone(path, greeted=greeted)
    finally:
        stop_coordinators(state)
        coordinator.wait(timeout=30)
    assert "a hook failed" not in (state / COORDINATOR_LOG).read_text()


def _hello_then_gone(path: Path, *, greeted: bool) -> None:
    """A hook's hello to the coordinator at ``path``, from one that reads nothing more (after
    its greeting, or not even that); back once the coordinator has let go of the pipe it was
    handed (done with this hook)."""
    log_read, log_write = os.pipe()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as hook:
            hook.connect(str(path))
            if greeted:
                assert hook.recv(1) == GREETING
            hook.shutdown(socket.SHUT_RD)  # the acknowledgement (or greeting) cannot reach it
            try:
                send_hello(hook, {4: log_write}, ["offload-hook"], {}, os.getpid())
            except BrokenPipeError:
                # Not greeted: a greeting written after the shutdown meets EPIPE, and the
                # coordinator may close this connection before the hello is sent (a CI run):
                # the same hook gone, a step sooner. The log is checked all the same.
                if greeted:
                    raise
            os.close(log_write)
            log_write = -1
            assert select.select([log_read], [], [], 30)[0]
            assert os.read(log_read, 1) == b""
    finally:
        os.close(log_read)
        if log_write >= 0:
            os.close(log_write)
