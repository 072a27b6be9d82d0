"""``fleet.json``: what ``fleet_up`` started (see ``records.FleetState``), read and written
atomically, and turned into the ``Fleet`` its users see."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from offload.config.machines.files import read_user_file
from offload.fleet.files import write_private
from offload.fleet.records import FleetState, MemberRecord
from offload.fleet.spec import (
    MemberSpec,
)
from offload.fleet.view import Fleet, Member

__all__ = ["STATE_FILE", "fleet_of", "load_state", "member_of", "ordered", "write_state"]

STATE_FILE = "fleet.json"


def load_state(fleet_dir: Path) -> FleetState | None:
    path = fleet_dir / STATE_FILE
    # Bounded, as every file under a directory a user names (--dir): a fleet.json that is a
    # FIFO or a link to /dev/zero hung `offload fleet status` and every other fleet command.
    data = read_user_file(
        str(path), "fleet state file", hint_big="fleet.json is what `offload fleet up` started"
    )
    if data is None:
        return None
    return FleetState.from_json(data.decode(errors="replace"), origin=str(path))


def write_state(fleet_dir: Path, state: FleetState) -> None:
    write_private(fleet_dir / STATE_FILE, state.to_json())


def ordered(
    records: Mapping[str, MemberRecord], specs: Sequence[MemberSpec]
) -> tuple[MemberRecord, ...]:
    return tuple(records[s.name] for s in specs if s.name in records)


def member_of(fleet_dir: Path, record: MemberRecord) -> Member:
    return Member(
        record.spec,
        record.port,
        record.pid,
        fleet_dir / record.spec.name,
        record.start_time,
        record.mnt_ns,
    )


def fleet_of(fleet_dir: Path, state: FleetState) -> Fleet:
    return Fleet(fleet_dir, tuple(member_of(fleet_dir, r) for r in state.members), state.system)
