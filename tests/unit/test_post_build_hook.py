"""Nix's post-build-hook as offload runs it for builds on builders (``offload.build.post_hook``):
real programs; the fleet's end-to-end runs are in tests/integration/test_post_build_hook.py."""

from __future__ import annotations

import asyncio
import types
from pathlib import Path
from typing import cast

import pytest

from offload.build.post_hook import post_build_hook, run_post_build_hook
from offload.config.pool import Pool
from offload.errors import HookFailed, StoreError
from offload.names import LOCAL

DRV = "/nix/store/" + "a" * 32 + "-x.drv"
OUTS = ["/nix/store/" + "b" * 32 + "-x-dev", "/nix/store/" + "c" * 32 + "-x"]


def _script(tmp_path: Path, body: str) -> str:
    script = tmp_path / "hook.sh"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return str(script)


def _run(program: str) -> list[str]:
    said: list[str] = []
    asyncio.run(run_post_build_hook(program, DRV, OUTS, said.append, env={"PATH": "/bin"}))
    return said


def test_the_hook_gets_the_derivation_and_its_outputs_and_its_lines_are_told(
    tmp_path: Path,
) -> None:
    # A line longer than the stream's limit raised ValueError: the run ended with it.
    long = "0123456789" * 300_000  # pieces out of order would not make it again
    body = 'echo "$DRV_PATH"; echo "$OUT_PATHS" >&2; yes 0123456789 | head -n 300000 | tr -d "\\n"'
    said = _run(_script(tmp_path, body))
    # stdout's and stderr's lines are read at once, from two pipes: in no set order between
    # them, each pipe's in its own.
    outs = " ".join(sorted(OUTS))
    pieces = [line for line in said if line not in {DRV, outs}]
    assert (said.count(DRV), said.count(outs)) == (1, 1)
    assert said.index(DRV) < said.index(pieces[0])
    assert "".join(pieces) == long
    assert max(len(line) for line in said) <= 64 << 10
    # A line of just that size is one line, and no empty one after it.
    assert _run(_script(tmp_path, 'head -c 65536 /dev/zero | tr "\\0" y; echo; echo z')) == [
        "y" * 65536,
        "z",
    ]


def test_a_hook_that_fails_or_cannot_start_is_this_hosts_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as failed:
        _run(_script(tmp_path, "exit 3"))
    assert failed.value.message == f"program '{tmp_path / 'hook.sh'}' failed with exit code 3"
    assert failed.value.peer == LOCAL  # no builder is to blame
    with pytest.raises(StoreError, match=r"^cannot run post-build-hook '/nonexistent/hook'"):
        _run("/nonexistent/hook")


def _pool(program: str) -> Pool:
    return cast("Pool", types.SimpleNamespace(
        nix_settings={"post-build-hook": program}, local_env=lambda: None
    ))  # fmt: skip


def test_the_hook_is_left_to_the_daemon_that_runs_it_as_root() -> None:
    # Not root, where a nix-daemon builds: it runs it as root for its builds, and here it
    # would run without root's keys and fail builds that succeeded. A single-user Nix runs
    # it as its user.
    assert post_build_hook(_pool(""), euid=0, daemon=True) == (None, None)
    for euid, daemon in ((0, True), (0, False), (1000, False)):
        run, note = post_build_hook(_pool("/etc/nix/upload.sh"), euid=euid, daemon=daemon)
        assert run is not None
        assert note is None
    run, note = post_build_hook(_pool("/etc/nix/upload.sh"), euid=1000, daemon=True)
    assert run is None
    assert note is not None
    assert note.startswith("post-build-hook '/etc/nix/upload.sh' is the")


def test_hooks_run_one_at_a_time_and_none_after_one_failed(tmp_path: Path) -> None:
    # Nix runs them in turn and stops at a failure: the builds that ended meanwhile get none.
    log = tmp_path / "log"
    program = _script(tmp_path, f'echo "start $DRV_PATH" >>{log}; sleep 0.2; echo end >>{log};'
                      ' [ "$DRV_PATH" != /nix/store/bad.drv ]')  # fmt: skip
    run, _ = post_build_hook(_pool(program), euid=0, daemon=False)
    assert run is not None

    async def both() -> tuple[BaseException | None, BaseException | None]:
        said: list[str] = []
        first = run("/nix/store/bad.drv", OUTS, said.append)
        second = run(DRV, OUTS, said.append)
        return await asyncio.gather(first, second, return_exceptions=True)

    failed, skipped = asyncio.run(both())
    assert isinstance(failed, HookFailed)
    assert isinstance(skipped, HookFailed)
    assert skipped.message == "post-build-hook not run: it failed for '/nix/store/bad.drv'"
    assert log.read_text().splitlines() == ["start /nix/store/bad.drv", "end"]
