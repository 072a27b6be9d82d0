"""A session's first words (``links.base.first_words``): the reply, or its first line that is not
blank, never a wait for a newline a binary reply does not have."""

from __future__ import annotations

import asyncio

import pytest

from offload.transport.links.base import first_words

REPLY = b"\xcb\xee\x52\x54\x00\x00\x00\x00"  # 8 bytes, as the serve program's magic is


def _first(data: bytes) -> bytes:
    async def go() -> bytes:
        stream = asyncio.StreamReader()
        stream.feed_data(data)  # no EOF: a read past what is there would wait
        return await asyncio.wait_for(first_words(stream, REPLY), 2)

    return asyncio.run(go())


@pytest.mark.parametrize(
    ("data", "first"),
    [
        (REPLY + b"\x05\x02\x00\x00", REPLY),
        (b"offload-serve-pid 123 load\n" + REPLY, b"offload-serve-pid 123 load\n"),
        # A start-up file's short line before the reply: it waited 27 s for a newline.
        (b"hi\n" + REPLY + b"\x05\x02\x00\x00", b"hi\n"),
        # Blank lines first are skipped (a review: cut at the newline, they failed the start).
        (b"\n\r\noffload-serve-pid 123\n", b"offload-serve-pid 123\n"),
        (b"\n" + REPLY, REPLY),
        (b"hello from bashrc\n" + REPLY, b"hello from bashrc\n"),
    ],
)
def test_the_first_words_are_the_reply_or_the_first_line_said(data: bytes, first: bytes) -> None:
    assert _first(data) == first
