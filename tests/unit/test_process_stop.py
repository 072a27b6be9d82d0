"""Short commands given up on (``offload.process``): stopped with SIGTERM first, so a Nix stops
the builds it started, and killed once the grace is over, so no wait for one is unbounded."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from offload import process
from offload.process import Started
from tests.helpers.offload_run import wait_for


def test_a_command_given_up_from_another_thread_is_killed_after_the_grace(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A Nix blocked on a lock does not act on SIGTERM: give_up's SIGTERM alone left the
    # thread waiting in finish() for ever, and the clean-up with it (later signals ignored).
    monkeypatch.setattr(process, "_GRACE", 0.2)
    ready = tmp_path / "ready"
    started = Started(["sh", "-c", f"trap '' TERM; : > {ready}; exec sleep 600"])
    wait_for(ready.exists, 30, "the command to ignore SIGTERM")
    done: list[int] = []
    waiter = threading.Thread(target=lambda: done.append(started.finish().returncode))
    waiter.start()
    began = time.monotonic()
    started.terminate()
    waiter.join(timeout=30)
    assert not waiter.is_alive()
    assert done == [-9]  # SIGKILL, after SIGTERM was ignored
    assert time.monotonic() - began < 20


def test_a_command_that_stops_on_sigterm_is_not_killed() -> None:
    started = Started(["sh", "-c", "exec sleep 600"])
    started.terminate()
    assert started.finish().returncode == -15
