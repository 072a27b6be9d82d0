"""A terminal a test can type into and read: a tmux server of the test's own (its own socket),
one session, one pane; ``Pane.wait`` polls what it shows for a condition, with a deadline."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

__all__ = ["HEIGHT", "WIDTH", "Pane", "tmux_pane"]

WIDTH, HEIGHT = 120, 40


class Pane:
    """One tmux server of the test's own (its own socket), one session, one pane."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket

    def tmux(self, *args: str, env: dict[str, str] | None = None) -> str:
        argv = ["tmux", "-S", str(self.socket), "-f", "/dev/null", *args]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
        return done.stdout

    def start(self, command: str, env: dict[str, str]) -> None:
        size = ["-x", str(WIDTH), "-y", str(HEIGHT)]
        self.tmux("new-session", "-d", "-s", "view", *size, command, env=env)

    def screen(self) -> list[str]:
        """The pane and its scrollback, as text (no colours), right-trimmed."""
        text = self.tmux("capture-pane", "-p", "-t", "view", "-S", "-200")
        return [line.rstrip() for line in text.splitlines()]

    def wait(
        self, condition: Callable[[list[str]], bool], what: str, timeout: float = 60
    ) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            lines = self.screen()
            if condition(lines):
                return lines
            if time.monotonic() > deadline:
                pytest.fail(f"the view never showed {what}:\n" + "\n".join(lines))
            time.sleep(0.1)  # a poll interval, not a wait for something to happen

    def stop(self) -> None:
        subprocess.run(
            ["tmux", "-S", str(self.socket), "kill-server"], capture_output=True, check=False
        )


@contextlib.contextmanager
def tmux_pane() -> Iterator[Pane]:
    # Short paths: tmux and offload both keep sockets in them.
    work = Path(tempfile.mkdtemp(prefix="tmx", dir="/tmp"))
    view = Pane(work / "tmux")
    try:
        yield view
    finally:
        view.stop()
        shutil.rmtree(work, ignore_errors=True)
