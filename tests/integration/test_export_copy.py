"""Copies from the local store written by the local nix-store straight into a builder's session
(``offload.protocol.export``), against the shared fleet and real Nix 2.8: byte-identical NARs,
the bytes counted, and a failed export leaving nothing registered on the builder."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
from pathlib import Path

import pytest

from offload.errors import OffloadError
from offload.fleet import Fleet
from offload.names import LOCAL
from offload.protocol import client as serve_client
from offload.protocol.export import Exporter, ExportFailed
from offload.protocol.serve import copy_paths, topo_sort_infos
from offload.transport.links import LocalLink, MachineLink
from tests.helpers.fleets import fleet_machine
from tests.helpers.store_paths import added_random

MEMBER = "slow"


def _member_hashes(fleet: Fleet, paths: list[str]) -> dict[str, str]:
    argv = fleet.ssh_argv(MEMBER, "nix-store", "--query", "--hash", *paths)
    done = subprocess.run(argv, capture_output=True, text=True, check=True, env=fleet.env())
    return dict(zip(paths, done.stdout.split(), strict=True))


def _copy(fleet: Fleet, paths: list[str], exporter: Exporter | None = None) -> tuple[int, int]:
    """Copy ``paths`` from the local store; returns (bytes said moved, bytes the link sent)."""

    async def go() -> tuple[int, int]:
        link = MachineLink.from_machine(fleet_machine(fleet, MEMBER), env=fleet.env())
        async with link, LocalLink() as local:
            async with local.session() as src, link.session() as dst:
                assert src.exporter is not None  # the local store's session has one
                if exporter is not None:
                    src.exporter = exporter
                infos = topo_sort_infos(await src.query_path_infos(paths))
                moved = await copy_paths(src, dst, infos)
            return moved, link.stats.bytes_sent

    return asyncio.run(go())


def _local_hashes(paths: list[str]) -> dict[str, str]:
    out = subprocess.run(
        ["nix-store", "--query", "--hash", *paths], capture_output=True, text=True, check=True
    ).stdout
    return dict(zip(paths, out.split(), strict=True))


@pytest.mark.parametrize("limit", [None, 1 << 20], ids=["export-stream", "add-to-store-nar"])
def test_local_nix_store_writes_the_nars_into_the_session(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int | None
) -> None:
    if limit is not None:
        # Paths above the import limit go one by one by AddToStoreNar, from `nix-store --dump`.
        monkeypatch.setattr(serve_client, "SPLICED_IMPORT_LIMIT", limit)
    paths = added_random(tmp_path, 3 << 20, 3, prefix="export")
    moved, sent = _copy(fleet, paths)
    sizes = [Path(p).stat().st_size for p in paths]
    assert moved > sum(sizes)
    assert sent > moved  # the NARs and the requests around them, all counted
    assert all(fleet.store_has(MEMBER, p) for p in paths)
    assert _member_hashes(fleet, paths) == _local_hashes(paths)


@pytest.mark.parametrize("limit", [None, 1 << 20], ids=["export-stream", "add-to-store-nar"])
def test_a_failed_export_registers_nothing_and_names_the_local_store(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int | None
) -> None:
    if limit is not None:
        # Pipelined: the second path's `nix-store --dump` is already running when the first fails.
        monkeypatch.setattr(serve_client, "SPLICED_IMPORT_LIMIT", limit)
    paths = added_random(tmp_path, 3 << 20, 2, prefix="export")
    # A nix-store whose export stops half way through the first NAR and fails.
    script = tmp_path / "nix-store-cut"
    script.write_text(
        '#!/bin/sh\nnix-store "$@" | head -c 1000000\necho "error: disk read failed" >&2\nexit 1\n'
    )
    script.chmod(0o755)
    cut = dataclasses.replace(Exporter(("nix-store",), None, LOCAL), program=(str(script),))
    with pytest.raises(OffloadError) as caught:
        _copy(fleet, paths, cut)
    assert isinstance(caught.value, ExportFailed)
    assert caught.value.peer == LOCAL
    assert "error: disk read failed" in caught.value.message
    assert not any(fleet.store_has(MEMBER, p) for p in paths)
    # The member still takes the same paths whole afterwards.
    _copy(fleet, paths)
    assert _member_hashes(fleet, paths) == _local_hashes(paths)


def test_the_next_dump_starts_while_the_last_path_is_sent(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(serve_client, "SPLICED_IMPORT_LIMIT", 1 << 20)
    first, second = sorted(added_random(tmp_path, 3 << 20, 2, prefix="export"))
    marks = tmp_path / "marks"
    marks.mkdir()
    # Each dump leaves a mark; the first one writes nothing until the second has started, and
    # gives up (failing the copy) if it never does, as when dumps ran one after the other.
    script = tmp_path / "nix-store-marked"
    script.write_text(
        f'#!/bin/sh\ntouch "{marks}/$(basename "$2")"\n'
        f'if [ "$2" = {first} ]; then i=0\n'
        f'  until [ -e "{marks}/{Path(second).name}" ]; do\n'
        '    i=$((i + 1)); [ "$i" -lt 500 ] || { echo "error: not started ahead" >&2; exit 1; }\n'
        "    sleep 0.01\n  done\nfi\n"
        'exec nix-store "$@"\n'
    )
    script.chmod(0o755)
    marked = dataclasses.replace(Exporter(("nix-store",), None, LOCAL), program=(str(script),))
    _copy(fleet, [first, second], marked)
    assert _member_hashes(fleet, [first, second]) == _local_hashes([first, second])


def test_a_few_small_paths_go_through_the_session_not_a_nix_store_child(
    fleet: Fleet, tmp_path: Path
) -> None:
    # A build's inputs are most often a few small outputs: a `nix-store --export` child cost
    # more to start than they take to send. An exporter that always fails shows it unused.
    paths = added_random(tmp_path, 64 << 10, 3, prefix="small")
    script = tmp_path / "nix-store-fails"
    script.write_text('#!/bin/sh\necho "error: not to be run" >&2\nexit 1\n')
    script.chmod(0o755)
    failing = dataclasses.replace(Exporter(("nix-store",), None, LOCAL), program=(str(script),))
    moved, _ = _copy(fleet, paths, failing)
    assert moved > 3 * (64 << 10)
    assert _member_hashes(fleet, paths) == _local_hashes(paths)
    # Past SPLICED_FROM in all, the same exporter is the one that writes them: it fails.
    many = added_random(tmp_path, 3 << 20, 2, prefix="bulk")
    with pytest.raises(ExportFailed, match="not to be run"):
        _copy(fleet, many, failing)
