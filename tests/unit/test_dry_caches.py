"""A dry run's caches (``build.dry_caches``) over a stand-in ``nix-store`` on PATH: what Nix
prints is the input here, the reading of it is what is tested (real Nix in
tests/integration/test_local_substitutes.py)."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from offload.build.dry_caches import caches_asked
from offload.config.pool import Pool
from offload.config.settings import NixSettings

CACHE = "http://127.0.0.1:9"


def _nix_store_saying(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *lines: str) -> None:
    said = tmp_path / "said"
    said.write_text("".join(f"{line}\n" for line in lines))
    script = tmp_path / "bin" / "nix-store"
    script.parent.mkdir()
    script.write_text(f"#!/bin/sh\ncat '{said}' >&2\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")


def test_a_cache_error_that_is_nix_s_last_line_is_still_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An HTTP error is held for a body that may follow; here nothing follows it at all.
    _nix_store_saying(
        tmp_path,
        monkeypatch,
        f"warning: unable to download '{CACHE}/nix-cache-info': HTTP error 502",
    )
    pool = Pool(None, (), local_substitutes=True, nix_settings=NixSettings({"substituters": CACHE}))
    said: list[str] = []
    asked = asyncio.run(caches_asked([("/nix/store/a-x.drv", "out")], pool, said.append))
    assert said == [f"warning: unable to download '{CACHE}/nix-cache-info': HTTP error 502"]
    assert [(e.state, e.cache) for e in asked.left_out] == [("cache", CACHE)]
