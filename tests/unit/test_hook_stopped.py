"""How a hook tells how the coordinator it started ended (``offload.hook.stopped``)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess

import pytest

from offload.hook.stopped import _status


def test_a_coordinator_that_ends_after_closing_the_socket_is_said_as_it_ended_without_pidfds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A kernel before 5.3 (RHEL 8's 4.18), or a seccomp filter, has no pidfd_open: the hook
    # said "not ended 1 s after it closed this hook's socket" at once, without waiting.
    def refused(pid: int, flags: int = 0) -> int:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(os, "pidfd_open", refused)
    # Ends by SIGKILL a moment after the hook asks (a coordinator still ending).
    child = subprocess.Popen(["sh", "-c", "sleep 0.2; kill -9 $$"])
    try:
        ours, status = _status(child.pid)
    finally:
        child.kill()
        child.wait()
    assert ours
    assert status is not None
    assert os.WIFSIGNALED(status)
    assert os.WTERMSIG(status) == signal.SIGKILL


def test_a_process_this_one_did_not_start_is_not_ours() -> None:
    assert _status(1) == (False, None)
