"""Stopping ``offload build`` with a signal: SIGTERM as Ctrl-C, and Ctrl-C at any moment.

SIGTERM while builds run on builders: the live view gives the cursor back, the remote build
is stopped and what it wrote of its output deleted, offload's temporary directories are gone,
and the exit status is 143. Ctrl-C while
offload is still starting never prints a traceback.
"""

from __future__ import annotations

import json
import os
import pty
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload.backoff import load_backoff
from tests.helpers import processes
from tests.helpers.fleets import member_processes
from tests.helpers.nix_files import marker_script, nix_file, out_path, valid_locally
from tests.helpers.offload_run import offload_argv, offload_env, wait_for

HIDE_CURSOR, SHOW_CURSOR = b"\x1b[?25l", b"\x1b[?25h"


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A TMPDIR of the run's own, short enough for offload to keep its ssh sockets in."""
    path = Path(tempfile.mkdtemp(prefix="sig", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the other end is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


# A background job of a script starts with Ctrl-C ignored (`offload build ... &`): SIGTERM must
# stop it all the same.
IGNORING_CTRL_C = ["/bin/sh", "-c", 'trap "" INT; exec "$@"', "sh"]


def _long_build(fleet, tmp_path, short_tmp):
    """A build on medium that runs until stopped: (its running marker, the file that would
    release it, its Nix file, the run's env, the command line without ``--on``)."""
    marker, release = tmp_path / "running", tmp_path / "never"
    # Part of the output is written before the wait, as a build stopped mid-way leaves it.
    wait = marker_script(
        marker, f"echo part > $out; while [ ! -e {release} ]; do /bin/sleep 0.1; done"
    )
    file = nix_file(tmp_path, f'{{ long = mk "long" "{wait}" {{}}; }}\n')
    env = offload_env(fleet, tmp_path, TMPDIR=str(short_tmp))
    argv = offload_argv(file, "-A", "long", "--builders", f"@{fleet.machines_file}")
    return marker, release, file, env, argv


@pytest.mark.parametrize("ctrl_c", ["default", "ignored"])
def test_sigterm_stops_the_run_as_ctrl_c_does(fleet, tmp_path, short_tmp, ctrl_c):
    marker, release, file, env, argv = _long_build(fleet, tmp_path, short_tmp)
    main, other = pty.openpty()  # stderr a terminal: the live view, with its hidden cursor
    wrap = IGNORING_CTRL_C if ctrl_c == "ignored" else []
    proc = processes.start(
        [*wrap, *argv, "--on", "medium", "-j", "0"], env=env, cwd=tmp_path, stderr=other
    )
    os.close(other)
    try:
        wait_for(marker.exists, 30, "the build to run on medium")
        assert any(str(release) in cmd for _, cmd in member_processes(fleet.member("medium")))
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        output = _read_all(main)
    finally:
        processes.kill_group(proc)
        proc.wait()
        os.close(main)
    assert code == 143, output.decode(errors="replace")
    assert b"error: interrupted" in output
    assert HIDE_CURSOR in output
    assert output.rindex(SHOW_CURSOR) > output.rindex(HIDE_CURSOR)
    assert b"Traceback" not in output
    assert not [p.name for p in short_tmp.iterdir() if p.name.startswith("ofl-")]
    # The build was stopped on the builder, not left running there.
    assert not [cmd for _, cmd in member_processes(fleet.member("medium")) if str(release) in cmd]
    assert not valid_locally(out_path(file, "long"))
    # Nor is what it wrote of its output left in the builder's store (unregistered, until a GC).
    medium = fleet.member("medium").root / "nix" / "store"
    assert not (medium / Path(out_path(file, "long")).name).exists()
    # The run is kept all the same: history shows it interrupted, its build stopped on medium
    # (Ctrl-C ignored too: the SIGTERM cancels the run as Ctrl-C does; it was raised into the
    # event loop, which cancelled the run's tasks only as it closed, after the history).
    shown = subprocess.run(
        [sys.executable, "-m", "offload", "history", "--json"],
        env=env, cwd=tmp_path, capture_output=True, text=True, check=True,
    )  # fmt: skip
    history = json.loads(shown.stdout)
    assert [(run["outcome"], run["builds"]) for run in history["runs"]] == [
        ("interrupted", {"cancelled": 1})
    ]
    # The build offload stopped ends with its builder's "interrupted by the user": medium is
    # no less healthy for it, and no later run leaves it out.
    assert load_backoff(tmp_path / "state" / "backoff.json", time.time()) == {}


# Python itself, then `python -m offload` from its first line: interpreter start-up (site, the
# venv's .pth files) is not offload's to guard, so the Ctrl-C comes once it has said "up".
_ENTRY = (
    "import os, runpy; os.write(1, b'up\\n'); "
    "runpy.run_module('offload', run_name='__main__', alter_sys=True)"
)


@pytest.mark.parametrize("delay", [i * 0.025 for i in range(12)])
def test_ctrl_c_while_starting_prints_no_traceback(tmp_path, delay):
    proc = processes.start(
        [sys.executable, "-c", _ENTRY, "machines", "--builders", ""],
        env={**os.environ, "OFFLOAD_STATE_DIR": str(tmp_path / "state")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"up\n"
        time.sleep(delay)  # the moment of the Ctrl-C, not a wait for anything
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        processes.stop(proc)
    text = err.decode(errors="replace")
    # A Ctrl-C that lands before offload's first line (in the harness's line, or in runpy
    # finding the package) is Python's, as in any console script's wrapper: not offload's.
    frames = [line for line in text.splitlines() if line.startswith("  File ")]
    before = ('  File "<string>"', '  File "<frozen ')  # runpy and importlib finding it
    # setuptools' import hook, which the venv's .pth puts in front of every package search.
    hooks = ("/_distutils_hack/",)
    finding = [line for line in frames if not any(hook in line for hook in hooks)]
    if not (frames and all(line.startswith(before) for line in finding)):
        assert "Traceback" not in text, text
        # -SIGINT: the Ctrl-C came while Python was finalizing after offload had finished
        # (finalization puts SIGINT's default action back); a shell reports it as 130 too.
        assert proc.returncode in (0, 130, -signal.SIGINT), text


# Ctrl-C exactly while the installed `offload` command imports its CLI: a site hook of the
# test's sends it as Python looks for offload.cli.interrupts (the CLI's own first import).
_CTRL_C_ON_IMPORT = """import os, signal, sys
class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == "offload.cli.interrupts":
            os.kill(os.getpid(), signal.SIGINT)
sys.meta_path.insert(0, CtrlC())
"""


def test_ctrl_c_while_the_command_imports_its_cli_prints_no_traceback(tmp_path):
    """The `offload` users run (not `python -m offload`): pip's entry-point script imported the
    CLI where nothing caught a Ctrl-C, and a KeyboardInterrupt traceback ended it by SIGINT
    (the soak campaign's console-script runs: 2 of 20 signals in the first 0.6 s)."""
    (tmp_path / "sitecustomize.py").write_text(_CTRL_C_ON_IMPORT)
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    done = subprocess.run(
        [str(Path(sys.executable).parent / "offload"), "machines", "--builders", ""],
        env={**os.environ, "PYTHONPATH": path, "OFFLOAD_STATE_DIR": str(tmp_path / "state")},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 130, done.stderr


def test_a_second_signal_waits_for_the_first_ones_clean_up(fleet, tmp_path, short_tmp):
    """Ctrl-C, then SIGTERM at once (an impatient user, a supervisor's word): the second is
    ignored, as Nix ignores it, so the first one's clean-up goes to its end. asyncio's own
    runner raised it into that clean-up: the build's partial output stayed on the builder and
    the run was missing from history. (In this order because two signals pending together are
    delivered lowest number first: SIGINT's, whichever was sent first.)"""
    marker, release, file, env, argv = _long_build(fleet, tmp_path, short_tmp)
    proc = processes.start(
        [*argv, "--on", "medium", "-j", "0"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_for(marker.exists, 30, "the build to run on medium")
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        processes.stop(proc)
    said = err.decode(errors="replace")
    assert proc.returncode == 130, said  # the first one's
    assert "Traceback" not in said
    assert not [cmd for _, cmd in member_processes(fleet.member("medium")) if str(release) in cmd]
    medium = fleet.member("medium").root / "nix" / "store"
    assert not (medium / Path(out_path(file, "long")).name).exists()
    shown = subprocess.run(
        [sys.executable, "-m", "offload", "history", "--json"],
        env=env, cwd=tmp_path, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert [run["outcome"] for run in json.loads(shown.stdout)["runs"]] == ["interrupted"]
