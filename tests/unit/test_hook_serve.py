"""How a hook answers when deciding fails (``offload.hook.serve``): before its reply, with one
line and a decline, so Nix builds the derivation itself; after ``# accept``, with an ``@nix``
error and exit 1, never a second reply (Nix reads none). ``answer`` is replaced by one that
fails where it is told to: the thing under test is what ``serve`` does with the failure."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from offload.hook import serve as serve_module
from offload.hook.keep import Keep
from offload.hook.serve import Hook, serve
from offload.hook.wire import HookIO, Reply, TryRequest, write_reply
from offload.protocol.wire import encode_int, encode_str, encode_strs

DRV = "/nix/store/" + "a" * 32 + "-hello.drv"


def _nix_says(accept_first: bool, tmp_path: Path) -> tuple[int, list[str]]:
    said: list[bytes] = []
    io = HookIO(said.append, lambda _data: None)

    async def failing(context: object, reader: object, request: TryRequest, **_: object) -> int:
        del context, reader, request
        if accept_first:
            write_reply(io, Reply.ACCEPT, "ssh://b")
        raise OSError(28, "No space left on device")

    data = (
        encode_int(1) + encode_str("builders") + encode_str("") + encode_int(0)
        + encode_str("try") + encode_int(1) + encode_str("x86_64-linux") + encode_str(DRV)
        + encode_strs([])
    )  # fmt: skip

    async def go() -> int:
        stream = asyncio.StreamReader()
        stream.feed_data(data)
        stream.feed_eof()
        env = {"OFFLOAD_STATE_DIR": str(tmp_path / "state"), "PATH": "/usr/bin:/bin"}
        keep = Keep(tmp_path / "state")
        try:
            return await serve(Hook(stream, io, ["offload-hook"], env, 1), keep, guarded=False)
        finally:
            await keep.aclose()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(serve_module, "answer", failing)
        code = asyncio.run(go())
    return code, b"".join(said).decode().splitlines()


def test_a_failure_before_the_reply_declines_with_one_line(tmp_path: Path) -> None:
    code, lines = _nix_says(accept_first=False, tmp_path=tmp_path)
    assert code == 0
    error = "offload-hook: error: internal error: OSError: [Errno 28] No space left on device"
    assert lines[-2:] == [f"{error}; {DRV} is left to Nix", "# decline"]


def test_a_failure_after_accepting_fails_the_build_and_says_why(tmp_path: Path) -> None:
    code, lines = _nix_says(accept_first=True, tmp_path=tmp_path)
    assert code == 1
    assert lines[-3:-1] == ["# accept", "ssh://b"]
    assert lines[-1].startswith("@nix ")
    message = json.loads(lines[-1].removeprefix("@nix "))
    assert message["msg"] == (
        "offload-hook: error: internal error: OSError: [Errno 28] No space left on device; "
        "the build failed"
    )
    assert "# decline" not in lines
