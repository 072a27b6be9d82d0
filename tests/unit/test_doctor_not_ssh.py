"""A machines line offload cannot build on fails doctor with why, as `offload machines` says it.

A binary cache or a store on this host passed as "ok" with a row of "-" (exit 0, "ok": true in
--json): nothing is contacted for it, so this needs no fleet."""

from __future__ import annotations

import json
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
