"""What ``offload history`` shows, computed from records (pure: no I/O).

Per machine: builds, failures, busy time (a copy's time less its waiting) and its measured
speed. A machine's measured speed compares its build times with what the other machines'
times predict for the same derivation names: the work a name takes (another machine's
median time times that machine's speed factor, the median over those machines) summed over
the names it built, divided by its own time for them. It reads as a speed factor: 2 means it
built as a speed-2 machine would; no name built elsewhere too, no measure. Speed factors are
the latest a run recorded for each machine.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from offload.history.records import PHASES, BuildRecord, RunRecord
from offload.ui.term import format_duration

__all__ = [
    "MachineStats",
    "build_dict",
    "machine_stats",
    "median",
    "run_dict",
    "speed_factors",
]


@dataclass(frozen=True)
class MachineStats:
    machine: str
    builds: int  # successful builds
    failures: int
    stopped: int  # lost with the machine, or cancelled copies
    busy: float  # seconds
    speed_factor: float | None  # as configured, from the latest run that had it
    measured_speed: float | None

    COLUMNS: ClassVar[tuple[str, ...]] = (
        "machine",
        "built",
        "failed",
        "stopped",
        "busy",
        "speed",
        "measured",
    )

    def cells(self) -> tuple[str, ...]:
        """The row under ``COLUMNS``, as people read it."""
        return (
            self.machine,
            str(self.builds),
            str(self.failures),
            str(self.stopped),
            format_duration(self.busy),
            "-" if self.speed_factor is None else f"{self.speed_factor:g}",
            "-" if self.measured_speed is None else f"{self.measured_speed:.2f}",
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "machine": self.machine,
            "builds": self.builds,
            "failures": self.failures,
            "stopped": self.stopped,
            "busy": round(self.busy, 3),
            "speed_factor": self.speed_factor,
            "measured_speed": None
            if self.measured_speed is None
            else round(self.measured_speed, 3),
        }


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def speed_factors(runs: Iterable[RunRecord]) -> dict[str, float]:
    """Each machine's speed factor as the latest of ``runs`` (any order) recorded it."""
    found: dict[str, tuple[float, float]] = {}
    for run in runs:
        for m in run.machines:
            if m.name not in found or found[m.name][0] < run.started:
                found[m.name] = (run.started, m.speed)
    return {name: speed for name, (_, speed) in found.items()}


def busy_seconds(build: BuildRecord) -> float:
    if not build.phases:
        return max(0.0, build.duration)
    start, end = build.span
    return max(0.0, end - start - build.phase_seconds("waiting"))


def machine_stats(builds: Iterable[BuildRecord], speeds: Mapping[str, float]) -> list[MachineStats]:
    """Per machine that ran a copy (skipped derivations ran nowhere), by name."""
    per: dict[str, list[BuildRecord]] = {}
    for b in builds:
        if b.machine:
            per.setdefault(b.machine, []).append(b)
    times = _times(per)
    return [
        MachineStats(
            machine=name,
            builds=sum(b.status == "built" for b in mine),
            failures=sum(b.status == "failed" for b in mine),
            stopped=sum(b.status in {"lost", "cancelled"} for b in mine),
            busy=math.fsum(busy_seconds(b) for b in mine),
            speed_factor=speeds.get(name),
            measured_speed=_measured(name, times, speeds),
        )
        for name, mine in sorted(per.items())
    ]


def _times(per: Mapping[str, list[BuildRecord]]) -> dict[str, dict[str, float]]:
    """name without version -> machine -> median seconds of its successful builds."""
    samples: dict[str, dict[str, list[float]]] = {}
    for machine, builds in per.items():
        for b in builds:
            if b.status == "built" and b.duration > 0:
                samples.setdefault(b.pname, {}).setdefault(machine, []).append(b.duration)
    return {
        pname: {machine: median(values) for machine, values in by.items()}
        for pname, by in samples.items()
    }


def _measured(
    machine: str, times: Mapping[str, Mapping[str, float]], speeds: Mapping[str, float]
) -> float | None:
    work = own = 0.0
    for by_machine in times.values():
        if machine not in by_machine:
            continue
        others = [t * speeds.get(m, 1.0) for m, t in by_machine.items() if m != machine]
        if others:
            work += median(others)
            own += by_machine[machine]
    return work / own if own > 0 else None


def run_dict(run: RunRecord, counts: Mapping[str, int]) -> dict[str, object]:
    return {
        "run_id": run.run_id,
        "started": run.started,
        "finished": run.finished,
        "wall": round(run.wall, 3),
        "asked": list(run.asked),
        "outcome": run.outcome,
        "machines": [
            {
                "name": m.name,
                "speed": m.speed,
                "slots": m.slots,
                "said": list(m.said),
                "usable": m.usable,
            }
            for m in run.machines
        ],
        "estimate": run.estimate,
        "lower_bound": run.lower_bound,
        "builds": dict(sorted(counts.items())),
    }


def build_dict(build: BuildRecord) -> dict[str, object]:
    """A build with its phases' seconds summed per phase (``phase_seconds``) as well."""
    return {
        **build.as_dict(),
        "phase_seconds": {p: round(build.phase_seconds(p), 3) for p in PHASES},
    }
