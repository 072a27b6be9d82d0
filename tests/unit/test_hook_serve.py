"""How a hook answers when deciding fails (``offload.hook.serve``): before its reply, with one
line and a decline, so Nix builds the derivation itself; after ``# accept``, with an ``@nix``
error and exit 1, never a second reply (Nix reads none); and a build for another store than
this host's is declined for good. ``answer`` is replaced by one that fails where it is told
to: the thing under test is what ``serve`` does with each request, and the turns it tells the
hook process (``HookIO.on_turn``: whether Nix waits for a reply)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import pytest

from offload.hook import serve as serve_module
from offload.hook.keep import Keep
from offload.hook.serve import Hook, serve
from offload.hook.wire import HookIO, Reply, TryRequest, write_reply
from offload.protocol.wire import encode_int, encode_str, encode_strs

DRV = "/nix/store/" + "a" * 32 + "-hello.drv"
ERROR = "offload-hook: error: internal error: OSError: [Errno 28] No space left on device"

Answer = Callable[..., Awaitable[int | None]]


def _nix_asks(settings: dict[str, str], drvs: Sequence[str] = (DRV,)) -> bytes:
    """The settings preamble, then a ``try`` for each of ``drvs``."""
    preamble = b"".join(encode_int(1) + encode_str(k) + encode_str(v) for k, v in settings.items())
    return preamble + encode_int(0) + b"".join(
        encode_str("try") + encode_int(1) + encode_str("x86_64-linux") + encode_str(drv)
        + encode_strs([])
        for drv in drvs
    )  # fmt: skip


def _serve(
    tmp_path: Path,
    settings: dict[str, str],
    answer: Callable[[HookIO], Answer],
    drvs: Sequence[str] = (DRV,),
) -> tuple[int, list[str]]:
    """``serve``'s exit code and the lines Nix reads, with ``answer(io)`` deciding; each turn
    told to the hook process is a line ``<turn>`` among them, where it was told."""
    said: list[bytes] = []
    io = HookIO(said.append, lambda _data: None)
    io.on_turn = lambda turn: said.append(f"<{turn.value}>\n".encode())

    async def go() -> int:
        stream = asyncio.StreamReader()
        stream.feed_data(_nix_asks(settings, drvs))
        stream.feed_eof()
        env = {"OFFLOAD_STATE_DIR": str(tmp_path / "state"), "PATH": "/usr/bin:/bin"}
        keep = Keep(tmp_path / "state")
        try:
            return await serve(Hook(stream, io, ["offload-hook"], env, 1), keep, guarded=False)
        finally:
            await keep.aclose()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(serve_module, "answer", answer(io))
        code = asyncio.run(go())
    return code, b"".join(said).decode().splitlines()


def _nix_error(text: str) -> str:
    """``text`` as Nix reads an error before the reply: an ``@nix`` message at level 0, which a
    nix-daemon passes on to its client (a plain line went to the daemon's own log)."""
    return "@nix " + json.dumps({"action": "msg", "level": 0, "msg": text}, separators=(",", ":"))


def _errors(lines: Sequence[str]) -> list[str]:
    """The errors among ``lines``, by their text."""
    return [
        json.loads(line.removeprefix("@nix "))["msg"]
        for line in lines
        if line.startswith("@nix ") and '"level":0' in line
    ]


def _failing(accept_first: bool) -> Callable[[HookIO], Answer]:
    def make(io: HookIO) -> Answer:
        async def answer(context: object, reader: object, request: TryRequest, **_: object) -> int:
            del context, reader, request
            if accept_first:
                write_reply(io, Reply.ACCEPT, "ssh://b")
            raise OSError(28, "No space left on device")

        return answer

    return make


def test_a_failure_before_the_reply_declines_with_one_line(tmp_path: Path) -> None:
    code, lines = _serve(tmp_path, {"builders": ""}, _failing(accept_first=False))
    assert code == 0
    assert lines[-5:] == [
        "<asked>",
        _nix_error(f"{ERROR}; {DRV} is left to Nix"),
        "<replying>",
        "# decline",
        "<answered>",
    ]


def test_a_failure_after_accepting_fails_the_build_and_says_why(tmp_path: Path) -> None:
    code, lines = _serve(tmp_path, {"builders": ""}, _failing(accept_first=True))
    assert code == 1
    # The hook process is told before Nix reads the accept: were the coordinator to die now,
    # what it says must be what Nix reads after an accept (only @nix lines).
    assert lines[-5:-1] == ["<asked>", "<accepted>", "# accept", "ssh://b"]
    assert lines[-1].startswith("@nix ")
    assert json.loads(lines[-1].removeprefix("@nix "))["msg"] == f"{ERROR}; the build failed"
    assert "# decline" not in lines


def _declining(answered: list[str]) -> Callable[[HookIO], Answer]:
    """An ``answer`` that declines every try, noting the derivations it was asked about."""

    def make(io: HookIO) -> Answer:
        async def answer(context: object, reader: object, request: TryRequest, **_: object) -> None:
            del context, reader
            answered.append(request.drv_path)
            write_reply(io, Reply.DECLINE)

        return answer

    return make


@pytest.mark.parametrize(
    ("store", "declined"),
    [("/mnt", True), ("local?root=/mnt", True), ("auto", False), ("daemon", False)],
)
def test_a_build_for_another_store_is_declined_for_good(
    tmp_path: Path, store: str, declined: bool
) -> None:
    # nixos-install builds with --store /mnt: outputs must go there, and the hook brings them
    # home into this host's store only. Nix builds it itself (it stops asking the hook).
    answered: list[str] = []
    declining = _declining(answered)

    code, lines = _serve(tmp_path, {"builders": "", "store": store}, declining)
    assert code == 0
    if declined:
        assert answered == []
        said = (
            f"offload-hook: error: the build is for the store {store!r} (--store), not this "
            "host's own: offload-hook brings outputs home into this host's store only; "
            "building locally"
        )
        assert lines == [
            "<asked>", _nix_error(said), "<replying>", "# decline-permanently", "<answered>"
        ]  # fmt: skip
    else:
        assert answered == [DRV]
        assert lines[-2:] == ["# decline", "<answered>"]


@pytest.mark.parametrize(
    ("jobs", "then"),
    [("2", "building locally"), ("0", "Nix builds nothing here (max-jobs 0), so its builds fail")],
)
def test_a_hook_that_cannot_read_its_settings_says_what_nix_does_then(
    tmp_path: Path, jobs: str, then: str
) -> None:
    # A bad machines line declines every build for good: with -j 0 "building locally" was
    # said where Nix builds nothing, and stops with "unable to start any build".
    answered: list[str] = []
    settings = {"builders": "ssh://b x86_64-linux - x", "max-jobs": jobs}
    code, lines = _serve(tmp_path, settings, _declining(answered))
    assert code == 0
    assert answered == []
    (said,) = [line for line in _errors(lines) if line.startswith("offload-hook: error: ")]
    assert "column 4 (maxJobs)" in said
    assert said.endswith(f"; {then}")


def test_a_try_for_no_derivation_offload_can_build_is_declined_and_the_next_answered(
    tmp_path: Path,
) -> None:
    # A name no Nix takes ('..'), or a store path that is no .drv: the try is whole, Nix waits
    # for its reply, and the hook goes on to the next (it used to end without one).
    answered: list[str] = []
    declining = _declining(answered)

    dots = "/nix/store/" + "a" * 32 + "-.."
    out = "/nix/store/" + "a" * 32 + "-hello"
    code, lines = _serve(tmp_path, {"builders": ""}, declining, drvs=(dots, out, DRV))
    assert code == 0
    assert answered == [DRV]
    assert lines.count("# decline") == 3
    refused = [line for line in _errors(lines) if line.startswith("offload-hook: error:")]
    assert len(refused) == 2
    assert "'.' or '..'" in refused[0]
    assert refused[0].endswith("; it is left to Nix")
    assert f"{out!r} is not a derivation" in refused[1]
