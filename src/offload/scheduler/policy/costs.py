"""The time rules the policy plans with: transfers, overdue jobs and machine back-off.

A job started at ``now`` on a machine of speed ``s`` is expected to end at
``now + transfer + work / s``. The transfer estimate is pluggable (``TransferCost``, zero when
none is given; ``BandwidthTransferCost`` charges missing inputs by bytes and bandwidth,
``MissingInputs`` a fixed time per input job whose outputs the machine lacks). A running
job that has overrun its estimate is assumed to need another quarter of its elapsed time
(``slot_time``).

A machine that fails (unreachable, connection lost) is down for ``base x factor^(n-1)`` seconds
after its n-th consecutive failure, n capped (Hydra: 60 s x 3^(n-1), at most 4 steps, failures
within 30 s counting once): ``Backoff``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from offload.compiled import mypyc_attr
from offload.names import LOCAL
from offload.scheduler.dag import Job

__all__ = [
    "MIN_OVERDUE",
    "OVERDUE_FRACTION",
    "Backoff",
    "BandwidthTransferCost",
    "MissingInputs",
    "TransferCost",
    "slot_time",
]

# An overdue job is assumed to need this fraction of its elapsed time again.
OVERDUE_FRACTION = 0.25
MIN_OVERDUE = 1e-3


def slot_time(entry: tuple[float, float, str, int], now: float) -> float:
    """When the busy slot ``entry`` (expected end, start, job, copy) is expected to free."""
    end = entry[0]
    if end > now:
        return end
    return now + max(OVERDUE_FRACTION * (now - entry[1]), MIN_OVERDUE)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Down time after the n-th consecutive failure: base x factor^(n-1), n <= max_steps."""

    base: float = 60.0
    factor: float = 3.0
    max_steps: int = 4
    coalesce: float = 30.0

    def delay(self, failures: int) -> float:
        n = min(max(failures, 1), self.max_steps)
        return self.base * self.factor ** (n - 1)


class TransferCost(Protocol):
    """Seconds to bring a job's inputs to a machine (never negative: placement skips a
    machine that cannot beat the best finish even without a transfer); told where outputs
    end up."""

    def estimate(self, job: Job, machine: str) -> float: ...

    def record_output(self, job_id: str, machine: str) -> None: ...


# run.plan.InputMoves and the bench's simulated holders subclass it (``offload.compiled``).
@mypyc_attr(allow_interpreted_subclasses=True)
class MissingInputs:
    """``seconds`` for each input job whose outputs a machine does not hold (``holders``: a
    job -> the machines that hold its outputs, kept by its owner).

    A machine that holds none of a job's inputs pays for all of them: only the machines
    ``held`` names cost less, which is what lets placement score the others a tier at a time
    (``placement.place_by_holders``). A subclass keeps ``estimate`` and ``held`` as they are.
    """

    def __init__(self, holders: Mapping[str, Collection[str]], seconds: float) -> None:
        self._holders = holders
        self.seconds = seconds

    def estimate(self, job: Job, machine: str) -> float:
        holders = self._holders
        missing = 0
        for dep in job.deps:  # a loop, not sum() over a generator: this runs per machine scored
            if machine not in holders.get(dep, ()):
                missing += 1
        return self.seconds * missing

    def held(self, job: Job) -> dict[str, int]:
        """The machines that hold some of ``job``'s inputs, and how many (each input counted
        as often as ``job.deps`` names it, as ``estimate`` counts the missing ones)."""
        holders = self._holders
        counts: dict[str, int] = {}
        for dep in job.deps:
            for machine in holders.get(dep, ()):
                counts[machine] = counts.get(machine, 0) + 1
        return counts

    def record_output(self, job_id: str, machine: str) -> None:
        """The owner of ``holders`` records where outputs are."""


@dataclass(slots=True)
class BandwidthTransferCost:
    """Inputs missing on a machine cost their bytes / its bandwidth, plus a per-path latency.

    An output is present where it was built and on ``hub`` (the coordinator copies every output
    back to the local store), and on any machine listed in ``present`` from the start.
    """

    output_bytes: Mapping[str, int]
    bandwidth: Mapping[str, float]
    default_bandwidth: float = 100e6
    latency: float = 0.0
    hub: str | None = LOCAL
    present: dict[str, set[str]] = field(default_factory=dict)

    def estimate(self, job: Job, machine: str) -> float:
        missing_bytes = 0
        missing = 0
        for dep in job.deps:
            where = self.present.get(dep)
            if where is None or machine not in where:
                missing += 1
                missing_bytes += self.output_bytes.get(dep, 0)
        if not missing:
            return 0.0
        bandwidth = self.bandwidth.get(machine, self.default_bandwidth)
        return missing_bytes / bandwidth + self.latency * missing

    def record_output(self, job_id: str, machine: str) -> None:
        where = self.present.setdefault(job_id, set())
        where.add(machine)
        if self.hub is not None:
            where.add(self.hub)
