"""The end of the process when offload's own command line ran (``offload.cli._end``): the exit
status, the exit functions and the flushed output are Python's exit's, and a thread still
running is waited for as Python's exit waits for it.

Each case runs a fresh interpreter that calls ``offload.cli.main()`` as the console script does,
with a cheap command (``offload machines`` without builders).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

import pytest

Done = subprocess.CompletedProcess[str]
SCRIPT = Path(__file__).resolve().parents[2] / "bin" / "offload"

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
    assert "\nerror: cannot write to standard output: No space left on device" in done.stderr


def test_a_sigterm_while_code_made_from_a_string_runs_still_exits_143(tmp_path: Path) -> None:
    # A dataclass's methods are compiled from a string as its module is imported: a SIGTERM
    # then (as `offload build` imports its modules) made `python -m offload` die of SIGINT.
    (tmp_path / "sitecustomize.py").write_text(
        "import offload.cli as cli\n"
        "dispatch = cli._dispatch\n"
        "def interrupted(argv):\n"
        "    exec('import os, signal\\nos.kill(os.getpid(), signal.SIGTERM)\\n"
        "for _ in range(100): pass')\n"
        "    return dispatch(argv)\n"
        "cli._dispatch = interrupted\n"
    )
    env = {**os.environ, "OFFLOAD_STATE_DIR": str(tmp_path / "state")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-m", "offload", "machines", "--builders", "", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.stderr == "error: interrupted\n"
    assert done.returncode == 143


def test_a_sigterm_as_the_process_ends_ends_it_as_sigterm(tmp_path: Path) -> None:
    # The command is done: from there on a signal ends the process at once, and a SIGTERM as
    # itself, not as the Ctrl-C it is turned into while a command runs (130).
    done = _run(
        "import atexit, os, signal, time\n"
        "atexit.register(lambda: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(5)))\n"
        "from offload.cli import main\n"
        "main()\n",
        tmp_path,
    )
    assert done.returncode == -signal.SIGTERM, done.stderr


def test_a_ctrl_c_as_the_command_returns_is_said_not_a_traceback(tmp_path: Path) -> None:
    # Between the command's return and _end's own guard (freeing a large report or history
    # takes a while there): a traceback, seen after `offload report` of 100,000 builds.
    done = _run(
        "import signal\n"
        "import offload.cli as cli\n"
        "end = cli._end\n"
        "def ending(status):\n"
        "    signal.raise_signal(signal.SIGINT)\n"
        "    end(status)\n"
        "cli._end = ending\n"
        "cli.main()\n",
        tmp_path,
    )
    assert (done.returncode, done.stderr) == (130, "error: interrupted\n")
    assert json.loads(done.stdout)[0]["name"] == "local"  # the command's output, whole


def test_a_signal_after_the_command_was_stopped_is_ignored_to_the_end(tmp_path: Path) -> None:
    # A Ctrl-C stopped the command; a SIGTERM as the process ends (its exit functions) is
    # ignored as any later signal is: the status stays the first one's, not SIGTERM's death.
    done = _run(
        "import atexit, os, signal\n"
        "import offload.cli as cli\n"
        "atexit.register(lambda: (os.kill(os.getpid(), signal.SIGTERM), print('on')))\n"
        "def interrupted(argv):\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "cli._dispatch = interrupted\n"
        "cli.main()\n",
        tmp_path,
    )
    assert (done.returncode, done.stdout, done.stderr) == (130, "on\n", "error: interrupted\n")


def test_a_child_started_while_the_command_stops_can_still_be_stopped_by_ctrl_c(
    tmp_path: Path,
) -> None:
    # Later signals are ignored while the first one's clean-up runs, by a handler: SIG_IGN was
    # inherited by every child started meanwhile (the ssh that stops a remote build, a
    # nix-store), which then ignored Ctrl-C too.
    done = _run(
        "import asyncio, os, signal\n"
        "import offload.cli as cli\n"
        "from offload.cli.interrupts import steady_runner\n"
        "from offload.process import run_async\n"
        "async def go():\n"
        "    try:\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "        await asyncio.sleep(30)\n"
        "    finally:\n"
        "        done = await run_async(['grep', 'SigIgn', '/proc/self/status'])\n"
        "        print(done.stdout.split()[1], flush=True)\n"
        "def stopped(argv):\n"
        "    with steady_runner() as runner:\n"
        "        return runner.run(go())\n"
        "cli._dispatch = stopped\n"
        "cli.main()\n",
        tmp_path,
    )
    assert done.returncode == 130, done.stderr
    ignored = int(done.stdout, 16)
    assert not ignored & (1 << (signal.SIGINT - 1)), done.stdout


def test_stdout_that_cannot_be_written_is_one_line_naming_it(tmp_path: Path) -> None:
    # `offload completion bash > /dev/full` said "internal error: OSError ... report it".
    with Path("/dev/full").open("w") as full:
        done = _run(
            "sys.argv = ['offload', 'completion', 'bash']\nfrom offload.cli import main\nmain()\n",
            tmp_path,
            stdout=full,
        )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "error: cannot write to standard output: No space left on device",
        "hint: send it where there is room (a file on another disk, a pipe)",
    ]


@pytest.mark.parametrize("how", ["script", "module"])
def test_a_signal_while_the_cli_is_imported_is_held_and_then_stops_the_command(
    tmp_path: Path, how: str
) -> None:
    # A Ctrl-C as the CLI was imported could land in the import lock's callback: "Exception
    # ignored", and the command ran on to its end with 0. The scripts hold the signals until
    # the CLI's handlers take them: one sent as offload.cli is looked up is said at once.
    (tmp_path / "sitecustomize.py").write_text(
        "import os, signal, sys\n"
        "class Interrupt:\n"
        "    @staticmethod\n"
        "    def find_spec(name, path=None, target=None):\n"
        "        if name == 'offload.cli':\n"
        "            os.kill(os.getpid(), signal.SIGINT)\n"
        "            held = signal.SIGINT in signal.sigpending()\n"
        "            open(os.environ['HELD_FILE'], 'w').write(str(held))\n"
        "        return None\n"
        "sys.meta_path.insert(0, Interrupt)\n"
    )
    held = tmp_path / "held"
    env = {**os.environ, "OFFLOAD_STATE_DIR": str(tmp_path / "state"), "HELD_FILE": str(held)}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    start = [str(SCRIPT)] if how == "script" else ["-m", "offload"]
    done = subprocess.run(
        [sys.executable, *start, "machines", "--builders", "", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert held.read_text() == "True"
    assert done.stderr == "error: interrupted\n"
    assert done.returncode == 130
    assert done.stdout == ""


def test_signals_blocked_by_whoever_started_it_stay_blocked(tmp_path: Path) -> None:
    # The script held the three signals while the CLI was imported and then unblocked all
    # three, a SIGHUP its parent had blocked too, for itself and every child it started.
    mask = tmp_path / "mask"
    (tmp_path / "sitecustomize.py").write_text(
        "import atexit, os, signal\n"
        "def said():\n"
        "    held = signal.pthread_sigmask(signal.SIG_BLOCK, [])\n"
        "    open(os.environ['MASK_FILE'], 'w').write(' '.join(sorted(s.name for s in held)))\n"
        "atexit.register(said)\n"
    )
    env = {**os.environ, "OFFLOAD_STATE_DIR": str(tmp_path / "state"), "MASK_FILE": str(mask)}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "machines", "--builders", "", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
        preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP}),
    )
    assert done.returncode == 0, done.stderr
    assert mask.read_text() == "SIGHUP"
