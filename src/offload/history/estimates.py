"""Duration estimates from history, and history records from a finished run.

Estimates are in seconds on a machine of speed 1 ("work"), so one number serves every machine:
a build that took 8 s on a speed-4 builder is 32 s of work. Each name's estimate is the median
of its per-machine medians converted to work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from offload.history.db import History
from offload.history.records import BuildRecord, RunReport
from offload.store.path import split_name_version

__all__ = ["Estimator", "estimator", "records_from"]

Estimator = Callable[[Iterable[str]], Mapping[str, float]]


def estimator(history: History, speeds: Mapping[str, float]) -> Estimator:
    def estimate(pnames: Iterable[str]) -> dict[str, float]:
        result: dict[str, float] = {}
        for pname, per_machine in history.durations(pnames).items():
            works = sorted(
                duration * speeds.get(machine, 1.0) for machine, duration in per_machine.items()
            )
            result[pname] = works[len(works) // 2]
        return result

    return estimate


def records_from(report: RunReport) -> list[BuildRecord]:
    return [
        BuildRecord(
            run_id=report.run_id,
            drv_path=event.drv_path,
            pname=split_name_version(event.name)[0],
            machine=event.machine,
            # The build alone when known: connecting and copying are not the derivation's work.
            started=event.finished - event.build_seconds
            if event.build_seconds is not None
            else event.started,
            finished=event.finished,
            status=event.status,
            bytes_sent=event.bytes_sent,
            bytes_received=event.bytes_received,
        )
        for event in report.finished
        if event.status in {"built", "failed"}
    ]
