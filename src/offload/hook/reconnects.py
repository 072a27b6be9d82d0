"""Builders whose connection was lost under a build, reconnected by the coordinator at once.

A build whose builder went away mid-build backs that builder off for every build on this host
(``HookContext.machine_failed``) and goes elsewhere (``offload.hook.build_one.Lost``). But a
connection is lost too where the builder is fine: this host's ssh master ended (killed; ended
by ``ssh -O exit``), the network dropped for a moment; ssh tells none of these apart. So the
coordinator reconnects such a builder at once, in the background, as ``offload build`` does
and with its probe (``offload.scheduler.run.reconnects.answers``): a new session opened there
over a new master where the old one is gone. Answered, its backoff is
cleared and waiting derivations may take it, the lost build first (``offload.hook.run`` waits
for the reconnect before it places that build again: accepted, it can no longer go back to
Nix, and where no other builder can take it the nix-build failed); not, the backoff stands.
Either way the coordinator's log says it (the nix-build that lost the build may be gone by
then). At most one reconnect per builder per ``SPACING`` seconds.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from offload.backoff import save_backoff
from offload.config.machines import Machine
from offload.hook.coordinator_log import note
from offload.hook.links import BuilderLinks, Unreachable
from offload.scheduler.run.reconnects import SPACING
from offload.tasks import cancel_and_wait

__all__ = ["HookReconnects"]


class HookReconnects:
    """The coordinator's reconnects under way, one task per builder."""

    def __init__(self, links: BuilderLinks, state: Path, notify: Callable[[], None]) -> None:
        self._links = links
        self._backoff = state / "backoff.json"
        self._notify = notify  # waiting derivations look again
        self._tasks: dict[str, asyncio.Task[bool]] = {}
        self._last: dict[str, float] = {}

    def start(self, machine: Machine, env: Mapping[str, str]) -> asyncio.Task[bool] | None:
        """Reconnect ``machine``, backed off for a lost connection: the reconnect (its result:
        whether the builder answered), or None if it was reconnected within ``SPACING``
        seconds (one under way is that one)."""
        now = time.monotonic()
        name = machine.name
        if name in self._tasks:
            return self._tasks[name]
        if now - self._last.get(name, -math.inf) < SPACING:
            return None
        self._last[name] = now
        task = asyncio.get_running_loop().create_task(self._reconnect(machine, dict(env)))
        self._tasks[name] = task
        task.add_done_callback(lambda _: self._tasks.pop(name, None))
        return task

    async def _reconnect(self, machine: Machine, env: Mapping[str, str]) -> bool:
        try:
            await self._links.answers(machine, env)
        except Unreachable as exc:
            note(f"builder '{machine.name}' stays backed off: reconnecting failed: {exc.reason}")
            return False
        save_backoff(self._backoff, {machine.name: None}, time.time())
        note(f"builder '{machine.name}' reconnected after its connection was lost")
        self._notify()
        return True

    async def aclose(self) -> None:
        await cancel_and_wait(list(self._tasks.values()))
