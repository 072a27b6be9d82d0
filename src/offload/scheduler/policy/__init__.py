"""Placement policy: which ready job starts on which machine, and when.

The policy is pure and synchronous (no clock, no I/O); its driver is the simulator or the async
executor. Each module holds one part of its model:

- ``matching``: which machine may build which job (Nix's rule), ``MachineSlotSpec``;
- ``decisions``: what the policy tells its driver (``Start``, ``Speculate``, ``Move``,
  ``Wait``) and what an
  event changed (``Finished``, ``Cancel``, ``MachineDown``);
- ``costs``: the time rules: transfer estimates, overdue jobs, machine back-off;
- ``pool``: machines, their slots, eligibility classes and tiers, as the policy tracks them;
- ``classify``: each job's eligibility class, and the jobs no machine can build;
- ``queues``: the order of ready jobs per class, and the jobs coming soon;
- ``placement``: where a job finishes first; holds and claims on busy or free slots;
- ``slack``: a job off the critical path leaves fast machines to the jobs on it;
- ``speculation``: second copies of running jobs on idle machines;
- ``full``: a job waiting on a builder full of other clients' builds moves where it ends sooner;
- ``core``: ``Policy``, its rounds of decisions and its events.
"""

from offload.scheduler.policy.core import Policy
from offload.scheduler.policy.costs import Backoff, BandwidthTransferCost, TransferCost
from offload.scheduler.policy.decisions import (
    Cancel,
    Decision,
    Finished,
    MachineDown,
    Move,
    Speculate,
    Start,
    Wait,
)
from offload.scheduler.policy.full import full_wait
from offload.scheduler.policy.matching import MachineSlotSpec, can_build, why_cannot_build
from offload.scheduler.policy.speculation import SpeculationRule

__all__ = [
    "Backoff",
    "BandwidthTransferCost",
    "Cancel",
    "Decision",
    "Finished",
    "MachineDown",
    "MachineSlotSpec",
    "Move",
    "Policy",
    "Speculate",
    "SpeculationRule",
    "Start",
    "TransferCost",
    "Wait",
    "can_build",
    "full_wait",
    "why_cannot_build",
]
