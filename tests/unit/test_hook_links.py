"""What offload-hook's coordinator keeps of its builder sessions (``offload.hook.links``)."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

from offload.config.machines import parse_machines
from offload.hook.links import BuilderLinks
from offload.protocol.client import ServeClient

SYSTEM = "x86_64-linux"


def test_a_closed_sessions_answer_time_goes_with_it(tmp_path: Path) -> None:
    # Kept by a plain dict until the same session was lent again, which a session closed after
    # its linger or its turn never is: 12 KB each, one more every turn of every busy slot, for
    # a long-lived coordinator's life.
    links = BuilderLinks(tmp_path)
    session = ServeClient(None, None, name="b1")  # type: ignore[arg-type] # never used
    links._answered[session] = 1.0
    assert len(links._answered) == 1
    del session
    gc.collect()
    assert len(links._answered) == 0


def test_an_ssh_config_edited_while_the_coordinator_lives_gets_a_link_of_its_own(
    tmp_path: Path,
) -> None:
    # The coordinator kept the link (and its master) made under the old config: a user who
    # mended a HostName built on the old host for as long as builds kept that master busy.
    config = tmp_path / "ssh_config"
    config.write_text("Host b1\n  Port 2201\n")
    env = {"NIX_SSHOPTS": f"-F {config}"}
    (machine,) = parse_machines("ssh://b1 x86_64-linux - 1", source="m", system=SYSTEM)[0]

    async def scenario() -> None:
        links = BuilderLinks(tmp_path)
        first = links._link(machine, env)
        assert links._link(machine, env) is first  # the same config: the same link
        config.write_text("Host b1\n  Port 2202\n")
        second = links._link(machine, env)
        assert second is not first
        assert second[0].control_path != first[0].control_path  # another master
        assert first[1]._retired  # its sessions close as their builds end (it had none)
        await asyncio.gather(*links._closing)

    asyncio.run(scenario())
