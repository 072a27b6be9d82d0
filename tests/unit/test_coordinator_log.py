"""``hook.coordinator_log``: every line of the coordinator's log, its own and the transport's
warnings (``logging``), starts with the local time and says it is the coordinator's."""

from __future__ import annotations

import re
import subprocess
import sys

# As the coordinator process has it: configured once, then its notes and a module's warning.
_SCRIPT = """
import logging
from offload.hook.coordinator_log import configure, note
configure()
note("stopped by SIGTERM with 1 hook served")
logging.getLogger("offload.transport.links.pool").warning(
    "%s: could not stop remote process: %s", "b1", "gone")
"""


def test_each_line_of_the_coordinators_log_has_its_time() -> None:
    """The transport's warning was a bare line ("b1: could not stop remote process: gone",
    Python's last-resort handler), and none of the coordinator's lines had a time."""
    shown = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, check=True, timeout=60
    )
    time = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
    lines = shown.stderr.splitlines()
    assert len(lines) == 2, shown.stderr
    assert re.fullmatch(
        f"{time} offload coordinator: stopped by SIGTERM with 1 hook served", lines[0]
    )
    assert re.fullmatch(
        f"{time} offload coordinator: b1: could not stop remote process: gone", lines[1]
    )


def test_a_hook_served_in_its_own_process_says_its_notes_as_the_hooks() -> None:
    """With no coordinator its notes reach Nix's output: they said "offload coordinator"."""
    shown = subprocess.run(
        [sys.executable, "-c", "from offload.hook.coordinator_log import note; note('x')"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert shown.stderr == "offload-hook: x\n"
