"""One round of ``Policy.next_decisions``: what it has decided and reserved so far.

A round starts empty, gathers decisions, holds and claims while slots are free, and is read
once at its end (``Policy._end_round``); the longest remaining path and the coming jobs are
found at their first need and then kept for the rest of the round.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from offload.scheduler.policy.decisions import Decision
from offload.scheduler.policy.pool import EligibilityClass, Machine
from offload.scheduler.policy.queues import Coming

__all__ = ["Round"]


@dataclass(slots=True, eq=False)
class Round:
    """What one call of ``next_decisions`` has decided and reserved so far."""

    number: int
    hold_budget: int
    decisions: list[Decision] = field(default_factory=list)
    held: list[str] = field(default_factory=list)
    wake: float = math.inf
    # Machines with holds or claims this round, to clear at its end.
    reserved: list[Machine] = field(default_factory=list)
    # Classes whose every free slot is claimed: their held heads wait for the next round.
    full: set[EligibilityClass] = field(default_factory=set)
    # Found on first need: the longest remaining path, and the most critical coming jobs.
    remaining: float | None = None
    coming: list[Coming] | None = None
