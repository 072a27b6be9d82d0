"""The end of the process when offload's own command line ran (``offload.cli._end``): the exit
status, the exit functions and the flushed output are Python's exit's, and a thread still
running is waited for as Python's exit waits for it.

Each case runs a fresh interpreter that calls ``offload.cli.main()`` as the console script does,
with a cheap command (``offload machines`` without builders).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import IO

Done = subprocess.CompletedProcess[str]

COMMAND = "sys.argv = ['offload', 'machines', '--builders', '', '--json']\n"


def _run(code: str, tmp_path: Path, stdout: int | IO[str] = subprocess.PIPE) -> Done:
    # Output buffered as it is by default (not unbuffered, as some shells of CI set it).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env["OFFLOAD_STATE_DIR"] = str(tmp_path / "state")
    return subprocess.run(
        [sys.executable, "-c", "import sys\n" + COMMAND + code],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_the_command_ends_the_process_with_its_output_and_exit_functions(tmp_path: Path) -> None:
    done = _run(
        "import atexit\n"
        "atexit.register(lambda: print('exit function ran'))\n"
        "from offload.cli import main\n"
        "main()\n"
        "print('main returned')\n",
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    head, _, tail = done.stdout.rpartition("]\n")
    assert json.loads(head + "]")[0]["name"] == "local"
    assert tail == "exit function ran\n"  # and nothing after main: the process ended there


def test_a_thread_still_running_is_waited_for_as_python_waits_for_it(tmp_path: Path) -> None:
    done = _run(
        "import threading\n"
        "go = threading.Event()\n"
        "worker = threading.Thread(target=lambda: (go.wait(), print('thread done')))\n"
        "worker.start()\n"
        "from offload.cli import main\n"
        "print('main returned', main(), flush=True)\n"
        "go.set()\n",
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("main returned 0\nthread done\n")


def test_output_that_cannot_be_written_at_the_end_is_an_error(tmp_path: Path) -> None:
    with Path("/dev/full").open("w") as full:
        done = _run(
            # Buffered: written at the end. The command (no such log) writes to stderr only.
            "print('left in the buffer')\n"
            "sys.argv = ['offload', 'log', '/nix/store/00000000000000000000000000000000-x.drv']\n"
            "from offload.cli import main\n"
            "main()\n",
            tmp_path,
            stdout=full,
        )
    assert done.returncode == 1  # the command's own status; 120 only if it had none
    assert done.stderr.startswith("error: no build log kept"), done.stderr
    assert "\nerror: cannot write to <stdout>: [Errno 28]" in done.stderr
