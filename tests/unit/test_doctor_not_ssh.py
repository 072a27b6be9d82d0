"""A machines line offload cannot build on fails doctor with why, as `offload machines` says it.

A binary cache or a store on this host passed as "ok" with a row of "-" (exit 0, "ok": true in
--json); such a line is now left out of the pool as a run leaves it out (``not_connected``),
and doctor says so: nothing is contacted for it, so this needs no fleet."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from offload.cli import main


def test_a_cache_or_a_local_store_is_no_builder_to_check_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(tmp_path / "state"))
    machines = "https://cache.example.org x86_64-linux - 2 1; daemon x86_64-linux - 2 1"
    assert main(["doctor", "--builders", machines]) == 1
    error = capsys.readouterr().err.splitlines()
    said = next(line for line in error if line.startswith("error: no builder to check"))
    assert "'https://cache.example.org' is a binary cache, not a builder" in said
    assert "'daemon' is a store on this host: offload builds here as the local machine" in said


def test_parameters_no_check_finds_are_said_as_offload_machines_says_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # An empty remote-program and a misspelt parameter passed every check: offload runs the
    # default program there, Nix's own hook runs none ("--serve: command not found").
    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(tmp_path / "state"))
    with socket.socket() as closed:  # a loopback port nothing listens on: refused at once
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        machines = f"ssh://127.0.0.1:{port}?remote-program=&sshkey=x x86_64-linux - 2 1"
        main(["doctor", "--builders", machines])
    err = capsys.readouterr().err
    assert "remote-program is empty: Nix's own hook runs no program there" in err
    assert "URI parameter 'sshkey' means nothing to Nix's ssh stores (did you mean ssh-key?)" in err
