"""What offload remembers about builds, as plain values (no I/O).

A run's ``RunReport`` lives here too, below the scheduler that fills it in: history makes its
records from it (``offload.history.estimates.records_from``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypedDict

from offload.backoff import Health
from offload.ui.events import JobFinished

__all__ = ["BuildRecord", "BuildRecordDict", "RunReport"]


class BuildRecordDict(TypedDict):
    run_id: str
    drv_path: str
    pname: str
    machine: str
    started: float
    finished: float
    status: str
    bytes_sent: int
    bytes_received: int


@dataclass(frozen=True)
class BuildRecord:
    run_id: str
    drv_path: str
    pname: str  # derivation name without version: the key estimates are learned under
    machine: str
    started: float  # unix time
    finished: float
    status: str  # "built", "failed", "cancelled", "lost" (machine failed)
    bytes_sent: int = 0
    bytes_received: int = 0

    @property
    def duration(self) -> float:
        return self.finished - self.started

    def as_dict(self) -> BuildRecordDict:
        return BuildRecordDict(
            run_id=self.run_id,
            drv_path=self.drv_path,
            pname=self.pname,
            machine=self.machine,
            started=self.started,
            finished=self.finished,
            status=self.status,
            bytes_sent=self.bytes_sent,
            bytes_received=self.bytes_received,
        )


@dataclass
class RunReport:
    run_id: str
    built: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # drv -> error
    # drv -> Nix's BuildStatus (protocol.records), for the failures Nix reported as a build's
    # result; the others (no machine, a lost machine, the local store refusing) have none.
    statuses: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    finished: list[JobFinished] = field(default_factory=list)
    interrupted: bool = False
    health: dict[str, Health | None] = field(default_factory=dict)  # builders' backoff to keep

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped and not self.interrupted
