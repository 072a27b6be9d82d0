"""ssh masters started before a run has imported what it builds with.

Connecting to a builder (ssh's key exchange and authentication) is a run's longest start-up
step, and it needs nothing but the machines file. ``offload build`` therefore starts every
usable builder's master (``SshTransport.connect_early``) as soon as it has read its settings,
and imports the scheduler, history and renderers while those connect; the run's links then
take them over (``claim``) instead of starting their own, and the first session on each waits
for that connection as it would have waited for its own, error and all.

One process runs one command: the masters started are the process's, kept here until claimed.
A master nobody claimed (the run ended before its links were made, a builder the run left out)
is closed by ``close_unclaimed``, which the command calls whatever happens, Ctrl-C included.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from offload.config.machines import Machine
from offload.transport.dialect import dialect_of
from offload.transport.links.ssh_master import SshTransport
from offload.transport.ssh import CONNECT_TIMEOUT, ssh_target

__all__ = ["claim", "close_unclaimed", "start_masters"]

_STARTED: dict[tuple[Machine, int], tuple[dict[str, str], SshTransport]] = {}


async def start_masters(
    machines: Iterable[Machine],
    *,
    env: Mapping[str, str] | None = None,
    connect_timeout: int = CONNECT_TIMEOUT,
    shared: Path | None = None,
) -> None:
    """A master to each ssh builder of ``machines``, started; returns once every one's ssh
    runs, not once they are connected. With ``shared``, the builders' persistent masters
    there (``SshTransport``): one already there is used, one started stays after the run."""
    environ = dict(os.environ if env is None else env)
    starting = []
    for machine in machines:
        if not machine.is_ssh or (machine, connect_timeout) in _STARTED:
            continue
        transport = SshTransport(
            ssh_target(machine),
            name=machine.name,
            params=machine.params,
            env=environ,
            connect_timeout=connect_timeout,
            dialect=dialect_of(machine),
            shared=shared,
        )
        _STARTED[machine, connect_timeout] = (environ, transport)
        starting.append(transport.connect_early())
    await asyncio.gather(*starting)


def claim(
    machine: Machine,
    *,
    env: Mapping[str, str] | None = None,
    connect_timeout: int = CONNECT_TIMEOUT,
) -> SshTransport | None:
    """The master started early for ``machine`` with this environment, now the caller's to
    use and close; None when there is none."""
    started = _STARTED.get((machine, connect_timeout))
    if started is None or started[0] != dict(os.environ if env is None else env):
        return None
    del _STARTED[machine, connect_timeout]
    return started[1]


async def close_unclaimed() -> None:
    """Close every master started here that no link took over."""
    left = [transport for _, transport in _STARTED.values()]
    _STARTED.clear()
    await asyncio.gather(*(transport.close() for transport in left))
