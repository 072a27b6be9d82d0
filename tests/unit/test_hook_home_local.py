"""offload-hook bringing outputs home (``offload.hook.home``): a local process that cannot
start is this host's fault, never the builder's."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import NoReturn

import pytest

from offload.errors import TransportError
from offload.hook import home
from offload.names import LOCAL
from offload.protocol.serve import PathInfo

PATH = "/nix/store/" + "a" * 32 + "-out"
INFO = PathInfo(PATH, None, (), 2**21, "sha256:" + "0" * 52, None, ())  # unpacked by nix-store


def _cannot_start(*_: object, **__: object) -> NoReturn:
    raise TransportError("cannot start nix-store: Too many open files")


def test_a_registration_that_cannot_start_is_this_hosts_fault(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With no peer, run.py took it for the builder's and backed the builder off: every
    # builder in turn, while this host was out of processes or descriptors.
    monkeypatch.setattr(home, "run_async", _cannot_start)
    with pytest.raises(TransportError) as raised:
        asyncio.run(home._register([INFO]))
    assert raised.value.peer == LOCAL


def test_an_unpacking_that_cannot_start_is_this_hosts_fault(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    class Unstartable:
        async def __aenter__(self) -> NoReturn:
            _cannot_start()

        async def __aexit__(self, *_: object) -> None:
            return None

    monkeypatch.setattr(home, "spawn", lambda *_, **__: Unstartable())
    with pytest.raises(TransportError) as raised:
        asyncio.run(home._restore(None, INFO, tmp_path / "out"))  # type: ignore[arg-type]
    assert raised.value.peer == LOCAL
