"""offload started with stdout or stderr closed (`>&-`): as nix-build, it does its work and
exits as it would, what it would print going nowhere; never a traceback (Python leaves
``sys.stdout`` None) and never a Nix child writing into a file that took the closed number."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from offload.history.db import History
from tests.helpers.nix_files import nix_file, valid_locally


def _closed(command: str, tmp_path: Path, stream: int) -> subprocess.CompletedProcess[str]:
    """``offload COMMAND`` with ``stream`` (1 or 2) closed; the other one captured."""
    env = {**os.environ, "OFFLOAD_STATE_DIR": str(tmp_path / "state")}
    env["NIX_CONFIG"] = env.get("NIX_CONFIG", "") + "\nsubstituters =\n"
    other = "2>&1" if stream == 1 else ""  # stdout captured: stderr joins it there
    return subprocess.run(
        ["/bin/sh", "-c", f"'{sys.executable}' -m offload {command} {other} {stream}>&-"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("command", ["machines --builders ''", "history", "status"])
def test_a_listing_with_stdout_closed_exits_0_quietly(tmp_path: Path, command: str) -> None:
    (tmp_path / "state").mkdir()
    History(tmp_path / "state" / "history.sqlite").close()  # a history to list, of nothing
    done = _closed(command, tmp_path, 1)
    assert done.returncode == 0, done.stdout
    assert "Traceback" not in done.stdout
    assert "error" not in done.stdout


@pytest.mark.parametrize("stream", [1, 2])
def test_a_build_with_a_stream_closed_builds_and_exits_0(tmp_path: Path, stream: int) -> None:
    file = nix_file(tmp_path, 'mk "closed" "/bin/echo built > $out; /bin/echo a log line" {}\n')
    done = _closed("build --no-out-link --builders ''", tmp_path, stream)
    assert done.returncode == 0, done.stdout + done.stderr
    output = _out(file)
    assert valid_locally(output)
    assert "Traceback" not in done.stdout + done.stderr
    if stream == 2:  # stdout still has the output path, as nix-build's has
        assert done.stdout.split() == [output]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["default.nix", "state"]


def _out(file: Path) -> str:
    drv = subprocess.run(
        ["nix-instantiate", str(file)], capture_output=True, text=True, check=True
    ).stdout.strip()
    return subprocess.run(
        ["nix-store", "-q", "--outputs", drv], capture_output=True, text=True, check=True
    ).stdout.split()[0]


@pytest.mark.parametrize(
    ("gone", "args"),
    [(1, ["--json"]), (1, []), (2, ["-L"]), (2, ["--json", "-L"])],
    ids=["json-stdout", "paths-stdout", "lines-stderr", "json-stderr"],
)
def test_a_build_whose_reader_has_gone_builds_links_and_exits_0(
    tmp_path: Path, gone: int, args: list[str]
) -> None:
    """`offload build --json | head -1`: the reader of stdout (or stderr) goes away while the
    run writes. As nix-build, the run goes on to its result links and history, and exits 0;
    no traceback for each event it could not write."""
    file = nix_file(tmp_path, 'mk "gone" "/bin/echo a log line; /bin/echo built > $out" {}\n')
    env = {**os.environ, "OFFLOAD_STATE_DIR": str(tmp_path / "state")}
    env["NIX_CONFIG"] = env.get("NIX_CONFIG", "") + "\nsubstituters =\n"
    reader, writer = os.pipe()
    os.close(reader)  # gone before the first write: every write to it fails with EPIPE
    other = subprocess.PIPE
    try:
        done = subprocess.run(
            [sys.executable, "-m", "offload", "build", "--builders", "", *args],
            cwd=tmp_path,
            env=env,
            stdout=writer if gone == 1 else other,
            stderr=writer if gone == 2 else other,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(writer)
    said = done.stderr if gone == 1 else done.stdout
    assert done.returncode == 0, said
    assert "Traceback" not in said
    assert "Exception" not in said
    output = _out(file)
    assert valid_locally(output)
    assert str((tmp_path / "result").readlink()) == output
    history = subprocess.run(
        [sys.executable, "-m", "offload", "history", "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert [run["outcome"] for run in json.loads(history.stdout)["runs"]] == ["ok"]


@pytest.mark.parametrize(
    "command",
    [
        "completion bash",
        "manpage",
        "setup builder --key @k.pub",
        "machines --builders ssh://h convert",
        "fleet env --dir fleet",
        "report -o -",
    ],
)
def test_a_command_whose_product_is_files_says_stdout_is_closed(
    tmp_path: Path, command: str
) -> None:
    # `setup builder` (or client) without --write printed its files into nothing, exit 0
    # (interrupts tester), as did a converted machines file, a fleet's exports and a report
    # to - (a review); a listing still exits 0 quietly, as above.
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")],
                   check=True)  # fmt: skip
    done = _closed(command, tmp_path, 1)
    assert done.returncode == 1, done.stdout
    assert done.stdout.splitlines()[0] == (
        "error: standard output is closed: the files this command prints would be lost"
    )
