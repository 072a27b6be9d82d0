"""One round of ``Policy.next_decisions``: what it has decided and reserved so far.

A round starts empty, gathers decisions, holds and claims while slots are free, and is read
once at its end (``Policy._end_round``); the longest remaining path and the coming jobs are
found at their first need and then kept for the rest of the round.
"""

from __future__ import annotations

import math

from offload.scheduler.policy.decisions import Decision
from offload.scheduler.policy.pool import EligibilityClass, Machine
from offload.scheduler.policy.queues import Coming

__all__ = ["Round"]


class Round:
    """What one call of ``next_decisions`` has decided and reserved so far."""

    # A plain class: a dataclass's default factories cost a call each, once per round.
    __slots__ = (
        "coming",
        "decisions",
        "full",
        "held",
        "hold_budget",
        "number",
        "remaining",
        "reserved",
        "wake",
    )

    def __init__(self, number: int, hold_budget: int) -> None:
        self.number = number
        self.hold_budget = hold_budget
        self.decisions: list[Decision] = []
        self.held: list[str] = []
        self.wake = math.inf
        # Machines with holds or claims this round, to clear at its end.
        self.reserved: list[Machine] = []
        # Classes whose every free slot is claimed: their held heads wait for the next round.
        self.full: set[EligibilityClass] = set()
        # Found on first need: the longest remaining path, and the most critical coming jobs.
        self.remaining: float | None = None
        self.coming: list[Coming] | None = None
