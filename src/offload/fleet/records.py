"""What ``fleet.json`` records of a started fleet: each member's spec, port, pid, the pid's
start time (so a recycled pid is never signalled: ``offload.procfs``) and mount namespace.

Pure: it renders and parses text; ``state`` reads and writes the file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from offload.errors import FleetError
from offload.fleet.spec import ForcedCommand, MemberSpec

__all__ = ["STATE_VERSION", "FleetState", "MemberRecord"]

STATE_VERSION = 1


@dataclass(frozen=True)
class MemberRecord:
    """One started member, as written to ``fleet.json``."""

    spec: MemberSpec
    port: int
    pid: int
    start_time: int
    mnt_ns: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "speed": self.spec.speed,
            "jobs": self.spec.jobs,
            "proc_overrides": dict(self.spec.proc_overrides),
            "forced": None
            if self.spec.forced is None
            else {"command": self.spec.forced.command, "where": self.spec.forced.where},
            "untrusted": self.spec.untrusted,
            "port": self.port,
            "pid": self.pid,
            "start_time": self.start_time,
            "mnt_ns": self.mnt_ns,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MemberRecord:
        overrides = data.get("proc_overrides") or {}
        forced = data.get("forced")
        spec = MemberSpec(
            str(data["name"]),
            float(data["speed"]),
            int(data["jobs"]),
            tuple((str(target), str(text)) for target, text in overrides.items()),
            None if not forced else ForcedCommand(str(forced["command"]), str(forced["where"])),
            untrusted=bool(data.get("untrusted", False)),
        )
        return cls(
            spec,
            int(data["port"]),
            int(data["pid"]),
            int(data["start_time"]),
            str(data["mnt_ns"]),
        )


@dataclass(frozen=True)
class FleetState:
    system: str
    members: tuple[MemberRecord, ...]

    def to_json(self) -> str:
        data = {
            "version": STATE_VERSION,
            "system": self.system,
            "members": [m.as_dict() for m in self.members],
        }
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, *, origin: str = "fleet.json") -> FleetState:
        try:
            data = json.loads(text)
            if data.get("version") != STATE_VERSION:
                raise FleetError(
                    f"{origin}: unknown state version {data.get('version')!r}",
                    hint="an offload of another version started it: stop it with that one, or"
                    " stop stray sshd processes by hand and remove the fleet directory",
                )
            members = tuple(MemberRecord.from_dict(m) for m in data["members"])
            return cls(str(data["system"]), members)
        except (
            ValueError,
            KeyError,
            TypeError,
            AttributeError,
            RecursionError,
            OverflowError,
        ) as exc:
            # RecursionError: JSON nested deeper than the decoder recurses ("[[[[...");
            # OverflowError: int() of Infinity or 1e999 where a pid goes.
            raise FleetError(
                f"{origin} is malformed: {exc}",
                hint="stop stray sshd processes by hand, then remove the fleet directory",
            ) from exc
