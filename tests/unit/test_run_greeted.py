"""``run_greeted``: the doctor's login speaks first and keeps stdin open until the answer.

The program here stands in for Nix's daemon forced on a builder's key: like the daemon's
``MonitorFdHup``, it gives up ("interrupted by the user") if its input has hung up by the
time it would answer. Writing the greeting and closing stdin at once (as ``run_async`` with
``stdin=`` does) loses that race nearly always, since the child starts after the close: the
doctor's ``ssh`` row failed so on an ssh-ng:// builder whose key runs the daemon."""

from __future__ import annotations

import asyncio
import sys

from offload.process import run_greeted

WATCHER = r"""
import os, select, sys
hello = os.read(0, 8)
poller = select.poll()
poller.register(0, select.POLLIN | select.POLLHUP)
if any(ev & select.POLLHUP for _, ev in poller.poll(0)):
    sys.stderr.write("error: interrupted by the user\n")
    sys.exit(1)
os.write(1, b"ANSWER!!" + hello)
while os.read(0, 4096):
    pass
"""


def test_the_answer_comes_before_the_eof() -> None:
    done = asyncio.run(
        run_greeted([sys.executable, "-c", WATCHER], greeting=b"greeting", answer_size=8)
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "ANSWER!!greeting", "")


def test_a_program_that_ignores_its_input_ends_with_nothing_said() -> None:
    done = asyncio.run(run_greeted(["true"], greeting=b"greeting", answer_size=8))
    assert (done.returncode, done.stdout) == (0, "")


def test_stderr_and_a_short_answer_are_kept() -> None:
    script = "import sys; sys.stderr.write('why\\n'); sys.stdout.write('no'); sys.exit(3)"
    done = asyncio.run(
        run_greeted([sys.executable, "-c", script], greeting=b"greeting", answer_size=8)
    )
    assert (done.returncode, done.stdout, done.stderr) == (3, "no", "why\n")
