"""A machines line offload cannot build on fails doctor with why, as `offload machines` says it.

A binary cache or a store on this host passed as "ok" with a row of "-" (exit 0, "ok": true in
--json): nothing is contacted for it, so this needs no fleet."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from offload.cli import main


def test_a_cache_or_a_local_store_fails_the_ssh_check_with_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(tmp_path / "state"))
    machines = "https://cache.example.org x86_64-linux - 2 1; daemon x86_64-linux - 2 1"
    assert main(["doctor", "--builders", machines]) == 1
    out = capsys.readouterr().out
    assert "ssh fail: 'https://cache.example.org' is a binary cache, not a builder" in out
    assert "ssh fail: 'daemon' is a store on this host: offload builds only over ssh://" in out
    assert main(["doctor", "--builders", machines, "--json"]) == 1
    rows = json.loads(capsys.readouterr().out)
    assert [(row["name"], row["ok"]) for row in rows] == [
        ("https://cache.example.org", False),
        ("daemon", False),
    ]


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
