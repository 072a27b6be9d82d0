"""``fleet.json``: what ``fleet_up`` started (see ``records.FleetState``), read and written
atomically, and turned into the ``Fleet`` its users see."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from offload.errors import FleetError
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
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise FleetError(f"cannot read {path}: {exc.strerror}") from exc
    return FleetState.from_json(text, origin=str(path))


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
