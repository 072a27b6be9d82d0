"""What offload remembers about builds, as plain values (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

__all__ = ["BuildRecord", "BuildRecordDict"]


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
