"""The runner's loop passes over Python 3.11's pipe race on a cancelled wait, and nothing else.

A Ctrl-C while sessions closed printed asyncio's InvalidStateError traceback from
``SubprocessStreamProtocol.pipe_connection_lost`` before "interrupted" (two of twenty in
``offload doctor``); the race itself cannot be had on demand, so the loop is told of it as
asyncio tells it."""

from __future__ import annotations

import asyncio
import logging

import pytest

from offload.thread_pool import QuietRunner
from offload.typing_compat import override


class _Handle:
    def __init__(self, text: str) -> None:
        self.text = text

    @override
    def __repr__(self) -> str:
        return self.text


def test_only_the_pipe_race_is_passed_over(caplog: pytest.LogCaptureFixture) -> None:
    with QuietRunner() as runner:
        runner.run(asyncio.sleep(0))
        loop = runner.get_loop()
        race = "<Handle SubprocessStreamProtocol.pipe_connection_lost(1, None)>"
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            loop.call_exception_handler(
                {"message": "Exception in callback", "exception": asyncio.InvalidStateError(),
                 "handle": _Handle(race)}
            )  # fmt: skip
            assert caplog.records == []
            loop.call_exception_handler(
                {"message": "Exception in callback", "exception": ValueError("a bug"),
                 "handle": _Handle(race)}
            )  # fmt: skip
        (said,) = [r.getMessage() for r in caplog.records]  # the other one, as asyncio says it
        assert said.startswith("Exception in callback")
