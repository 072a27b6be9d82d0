"""Which builders get a second lane for large uploads (``offload.build.members``): those with
``compress=true``, where ssh compresses on one core per connection; no connection is opened
to find out."""

from __future__ import annotations

import asyncio

from offload.build.members import pool_members
from offload.config.machines import parse_machines
from offload.config.pool import Pool
from offload.transport.links import LocalLink

KEY = (
    "c3NoLWVkMjU1MTkgQUFBQUMzTnphQzFsWkRJMU5URTVBQUFBSUd4R1IyRnhE"
    "TDc2MXNLbFp4REc2VFRFbkorUDZmRFFYN1hLb0FMUTVyL0YK"
)
LINES = (
    f"ssh://plain.invalid x86_64-linux - 2 1 - - {KEY}\n"
    f"ssh://packed.invalid?compress=true x86_64-linux - 2 1 - - {KEY}\n"
    f"ssh-ng://packed-ng.invalid?compress=true x86_64-linux - 2 1 - - {KEY}\n"
)


def test_only_compressed_builders_get_a_lane() -> None:
    machines, _ = parse_machines(LINES, source="m", system="x86_64-linux")

    async def go() -> dict[str, bool]:
        async with pool_members(Pool(None, tuple(machines)), LocalLink()) as members:
            return {m.spec.name: m.lane is not None for m in members}

    assert asyncio.run(go()) == {
        "plain.invalid": False,
        "packed.invalid": True,
        "packed-ng.invalid": True,
    }
