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


A = "/nix/store/" + "a" * 32 + "-a"
B = "/nix/store/" + "b" * 32 + "-b.drv"


@pytest.mark.parametrize(
    "sizes", ["(0.03 MiB download, 0.12 MiB unpacked)", "(31.2 KiB download, 120.0 KiB unpacked)"]
)
def test_nix_s_lists_are_read_and_its_fetched_one_kept_as_it_said_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sizes: str
) -> None:
    # Nix 2.8-2.31 give MiB with two decimals, 2.33 on its own sizes (renderSize).
    fetched = [f"this path will be fetched {sizes}:", f"  {A}"]
    unknown = ["don't know how to build these paths:", "  /nix/store/x-unknown"]
    _nix_store_saying(
        tmp_path, monkeypatch, "this derivation will be built:", f"  {B}", *fetched, *unknown
    )
    pool = Pool(None, (), local_substitutes=True, nix_settings=NixSettings({"substituters": CACHE}))
    said: list[str] = []
    asked = asyncio.run(caches_asked([(B, "out")], pool, said.append))
    assert (asked.built, asked.fetched, said) == ({B}, fetched, [])


def test_nix_printing_no_list_leaves_the_plan_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not "nothing to build": nothing is known of what the caches have.
    _nix_store_saying(tmp_path, monkeypatch)
    pool = Pool(None, (), local_substitutes=True, nix_settings=NixSettings({"substituters": CACHE}))
    assert asyncio.run(caches_asked([(B, "out")], pool, lambda _: None)).built is None
