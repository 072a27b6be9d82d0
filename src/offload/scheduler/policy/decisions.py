"""What the policy tells its driver, and what an event report changed.

``next_decisions`` returns ``Start``, ``Speculate`` and ``Move`` (carry them out at once) and at
most one ``Wait`` (ask again at ``until`` unless an event comes first). ``on_finished`` answers
with a ``Finished`` (the other copies to ``Cancel``, the jobs now ready or skipped);
``on_machine_failed`` with a ``MachineDown``.

Start, Speculate, Cancel and Finished are made once per build (the simulator's plan of 50,000
builds makes some 200,000), so they are made by ``__init__``s of their own: mypyc compiles
those, while a dataclass's generated one stays interpreted (and a frozen one's
``object.__setattr__``s cost five times a compiled one). Not frozen for that reason; nothing
changes them once made, and they hash by their fields as before.
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


@dataclass(slots=True, init=False, unsafe_hash=True)
class Start:
    job: str
    machine: str
    expected_finish: float

    def __init__(self, job: str, machine: str, expected_finish: float) -> None:
        self.job = job
        self.machine = machine
        self.expected_finish = expected_finish


@dataclass(slots=True, init=False, unsafe_hash=True)
class Speculate:
    """Start a second copy of ``job`` (running on ``original``) on ``machine``."""

    job: str
    machine: str
    expected_finish: float
    original: str

    def __init__(self, job: str, machine: str, expected_finish: float, original: str) -> None:
        self.job = job
        self.machine = machine
        self.expected_finish = expected_finish
        self.original = original


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


@dataclass(slots=True, init=False, unsafe_hash=True)
class Cancel:
    """Stop the copy of ``job`` running on ``machine``: another copy finished first."""

    job: str
    machine: str

    def __init__(self, job: str, machine: str) -> None:
        self.job = job
        self.machine = machine


@dataclass(slots=True, init=False, unsafe_hash=True)
class Finished:
    """What a finish report changed. ``accepted`` is False for a copy already cancelled."""

    accepted: bool
    cancel: tuple[Cancel, ...]
    newly_ready: tuple[str, ...]
    skipped: tuple[str, ...]

    def __init__(
        self,
        accepted: bool,
        cancel: tuple[Cancel, ...] = (),
        newly_ready: tuple[str, ...] = (),
        skipped: tuple[str, ...] = (),
    ) -> None:
        self.accepted = accepted
        self.cancel = cancel
        self.newly_ready = newly_ready
        self.skipped = skipped


@dataclass(frozen=True, slots=True)
class MachineDown:
    machine: str
    until: float
    failures: int
    returned: tuple[str, ...]
    # The failure fell within the backoff the machine already had (another build lost in
    # the same fall): no new backoff, nothing new to say.
    merged: bool = False
