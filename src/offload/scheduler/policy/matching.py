"""Which machine may build which job: Nix's matching rule.

Each machine has a speed factor (work units per second), a number of slots and Nix's capability
triple (systems, supported and mandatory features). A job may run on a machine exactly when Nix
would let it (``nix-protocols.md`` 5.1): its system is one of the machine's systems or is
``builtin``, every required feature is in supported or mandatory, and every mandatory feature of
the machine is required by the job.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from offload.config.machines import Machine
from offload.config.machines.entry import MIN_SPEED
from offload.errors import SchedulerError
from offload.scheduler.dag import Job

__all__ = ["MachineSlotSpec", "can_build", "unschedulable_reason", "why_cannot_build"]


@dataclass(frozen=True, slots=True)
class MachineSlotSpec:
    """A machine as the policy sees it. ``speed`` is work units per second (Nix's speedFactor)."""

    name: str
    speed: float = 1.0
    slots: int = 1
    systems: frozenset[str] = field(default_factory=frozenset)
    supported: frozenset[str] = field(default_factory=frozenset)
    mandatory: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_machine(cls, machine: Machine) -> MachineSlotSpec:
        """A machines-file entry as the policy sees it."""
        return cls(
            name=machine.name,
            speed=machine.speed_factor,
            slots=machine.max_jobs,
            systems=frozenset(machine.systems),
            supported=frozenset(machine.supported_features),
            mandatory=frozenset(machine.mandatory_features),
        )

    def __post_init__(self) -> None:
        if not MIN_SPEED <= self.speed < math.inf:
            raise SchedulerError(
                f"machine {self.name!r}: speed must be at least {MIN_SPEED:g}, not {self.speed}"
            )
        if self.slots < 0:
            raise SchedulerError(f"machine {self.name!r}: slots must be >= 0, not {self.slots}")


def why_cannot_build(machine: MachineSlotSpec, system: str, required: frozenset[str]) -> str | None:
    """Nix's matching rule (build-remote.cc); None when the machine can build the job."""
    if system != "builtin" and system not in machine.systems:
        offered = ", ".join(sorted(machine.systems)) or "none"
        return f"{machine.name} builds {offered}, not {system}"
    missing = required - machine.supported - machine.mandatory
    if missing:
        return f"{machine.name} lacks feature {', '.join(sorted(missing))}"
    unmet = machine.mandatory - required
    if unmet:
        return f"{machine.name} only takes jobs requiring {', '.join(sorted(unmet))}"
    return None


def can_build(machine: MachineSlotSpec, system: str, required: frozenset[str]) -> bool:
    return why_cannot_build(machine, system, required) is None


def unschedulable_reason(job: Job, machines: Sequence[MachineSlotSpec]) -> str:
    """Why no machine of the pool can take ``job``: what it needs, and the first few refusals."""
    features = ", ".join(sorted(job.required_features))
    # "builtin" is Nix's name for a derivation any machine builds: no system is the matter.
    if job.system == "builtin":
        wants = f"it needs {features}" if features else "it needs no system or feature"
    else:
        wants = f"it needs system {job.system}" + (f" with {features}" if features else "")
    reasons = [
        why_cannot_build(m, job.system, job.required_features) or f"{m.name} has no slots"
        for m in machines
    ]
    detail = "; ".join(r for r in reasons[:4] if r) or "there are no machines"
    return f"{wants}; {detail}"
