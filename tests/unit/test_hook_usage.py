"""``offload-hook`` started by a person, not by Nix: ``--help`` and ``--version`` answer them
(exit 0), a terminal on stdin, an unknown option or no verbosity last is one error line and a
hint (exit 1); what Nix starts (the verbosity as the last argument, a pipe on stdin) still
reaches the protocol.

The real script, as Nix and people start it (``bin/offload-hook`` installed beside Python).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from offload import __version__
from tests.helpers.offload_run import stop_coordinators

HOOK = str(Path(sys.executable).parent / "offload-hook")


def _hook(
    tmp_path: Path,
    *args: str,
    stdin: int | None = subprocess.PIPE,
    given: str = "",
    coordinator: str = "0",
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "OFFLOAD_STATE_DIR": str(tmp_path),
        "OFFLOAD_HOOK_COORDINATOR": coordinator,
    }
    # A pipe on stdin (the default) ends once ``given`` is written to it.
    feed = {"input": given} if stdin == subprocess.PIPE else {"stdin": stdin}
    return subprocess.run(
        [HOOK, *args], capture_output=True, text=True, env=env, timeout=30, check=False,
        **feed,
    )  # fmt: skip


def _one_error(err: str) -> None:
    first, hint = err.splitlines()
    assert first.startswith("offload-hook: error: "), err
    assert hint.startswith("hint: "), err
    assert "--option build-hook" in hint, err
    assert "preamble" not in err, err


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_says_what_it_is_and_how_nix_starts_it(tmp_path: Path, flag: str) -> None:
    done = _hook(tmp_path, flag)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.startswith("usage: offload-hook")
    assert "Nix's build hook" in done.stdout
    assert '--option build-hook "$(command -v offload-hook)"' in done.stdout
    assert "trusted user" in done.stdout  # a daemon ignores it from anyone else, silently
    assert "build-hook = /" in done.stdout


def test_version(tmp_path: Path) -> None:
    done = _hook(tmp_path, "--version")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"offload-hook {__version__}\n", "")


def test_an_unknown_option_is_one_error(tmp_path: Path) -> None:
    done = _hook(tmp_path, "--frobnicate")
    assert done.returncode == 1
    _one_error(done.stderr)
    assert "'--frobnicate'" in done.stderr


@pytest.mark.parametrize("args", [(), ("3",)])
def test_a_terminal_on_stdin_is_told_nix_starts_it(tmp_path: Path, args: tuple[str, ...]) -> None:
    # Nix never gives its hook a terminal: even with Nix's argv, this is a person.
    controller, terminal = os.openpty()
    try:
        done = _hook(tmp_path, *args, stdin=terminal)
    finally:
        os.close(terminal)
        os.close(controller)
    assert done.returncode == 1
    _one_error(done.stderr)
    assert "meant to be started by Nix" in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("stdin", [subprocess.PIPE, subprocess.DEVNULL])
def test_no_verbosity_without_a_terminal_is_one_error(tmp_path: Path, stdin: int) -> None:
    # A script or a pipe, not Nix (whose argv always ends with the verbosity): before, it read
    # the protocol and said "stream ended while reading the settings preamble" with no hint.
    done = _hook(tmp_path, stdin=stdin)
    assert done.returncode == 1
    _one_error(done.stderr)
    assert "verbosity" in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("args", [("0",), ("--help", "3"), ("--extra", "7")])
def test_what_nix_starts_still_reads_the_protocol(tmp_path: Path, args: tuple[str, ...]) -> None:
    # Nix's argv ends with the verbosity (2.18 and later: the setting's own words before it),
    # whatever comes before it: the hook reads its settings, here from a pipe that ends at once.
    done = _hook(tmp_path, *args)
    assert done.returncode == 1
    assert "expected Nix's settings first, got nothing" in done.stderr
    assert "usage" not in done.stdout


@pytest.mark.parametrize("coordinator", ["0", "1"], ids=["in-process", "coordinator"])
@pytest.mark.parametrize(
    ("given", "said"),
    [
        ("hello\n", "expected Nix's settings first, got b'hello\\n' and then the end"),
        ("try 1 x86_64-linux /nix/store/x.drv\n", "expected Nix's settings first, got b'try 1 x8'"),
        # Eight zero bytes end the settings: what follows is no request.
        ("\0" * 100_000, "expected Nix's next request ('try'), got ''"),
    ],
    ids=["text", "a-try-as-text", "zeros"],
)
def test_a_stdin_that_is_not_nix_is_one_error_with_a_hint(
    tmp_path: Path, coordinator: str, given: str, said: str
) -> None:
    # Nix's argv, but not Nix on stdin (offload-hook run by hand with a number, or another
    # program feeding it): before, one protocol error ("stream ended while reading the settings
    # preamble (6 of 8 bytes)", "unknown hook request ''") with no hint.
    try:
        done = _hook(tmp_path, "3", given=given, coordinator=coordinator)
    finally:
        stop_coordinators(tmp_path)
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert line.startswith("offload-hook: error: "), line
    assert said in line
    assert "offload hook install --print" in line
    assert '--option build-hook "$(command -v offload-hook)"' in line
    assert done.stdout == ""
