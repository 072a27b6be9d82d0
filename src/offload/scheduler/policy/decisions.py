"""What the policy tells its driver, and what an event report changed.

``next_decisions`` returns ``Start``, ``Speculate`` and ``Move`` (carry them out at once) and at
most one ``Wait`` (ask again at ``until`` unless an event comes first). ``on_finished`` answers
with a ``Finished`` (the other copies to ``Cancel``, the jobs now ready or skipped);
``on_machine_failed`` with a ``MachineDown``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Cancel",
    "Decision",
    "Finished",
    "MachineDown",
    "Move",
    "Speculate",
    "Start",
    "Wait",
]


@dataclass(frozen=True, slots=True)
class Start:
    job: str
    machine: str
    expected_finish: float


@dataclass(frozen=True, slots=True)
class Speculate:
    """Start a second copy of ``job`` (running on ``original``) on ``machine``."""

    job: str
    machine: str
    expected_finish: float
    original: str


@dataclass(frozen=True, slots=True)
class Move:
    """Stop the copy of ``job`` waiting on ``source`` (every slot on that builder is held by
    other clients: ``Policy.on_machine_full``) and start it on ``machine`` instead."""

    job: str
    machine: str
    expected_finish: float
    source: str


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing else can start now; ask again at ``until`` if no event comes first."""

    until: float


Decision = Start | Speculate | Move | Wait


@dataclass(frozen=True, slots=True)
class Cancel:
    """Stop the copy of ``job`` running on ``machine``: another copy finished first."""

    job: str
    machine: str


@dataclass(frozen=True, slots=True)
class Finished:
    """What a finish report changed. ``accepted`` is False for a copy already cancelled."""

    accepted: bool
    cancel: tuple[Cancel, ...] = ()
    newly_ready: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MachineDown:
    machine: str
    until: float
    failures: int
    returned: tuple[str, ...]
    # The failure fell within the backoff the machine already had (another build lost in
    # the same fall): no new backoff, nothing new to say.
    merged: bool = False
