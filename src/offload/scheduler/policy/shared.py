"""The policy's answers to builders shared with other clients (the rule is ``full``'s).

A copy placed on a builder whose every slot other clients hold waits there
(``on_machine_full``): that machine's free slots are withheld, and the job moves to a free slot
elsewhere once waiting has cost as much as moving would (``Move``, from ``next_decisions``); a
slot given out there again (``on_slot_taken``, ``on_slot_freed``) gives slots back. A builder
loaded by others keeps fewer slots for this client (``on_load``, ``Pool.cut``).

A mixin of ``Policy``, whose state it reads and changes (``_Policy`` names what it uses).
"""

from __future__ import annotations

from typing import Protocol

from offload.scheduler.dag import JobGraph
from offload.scheduler.policy.costs import TransferCost
from offload.scheduler.policy.decisions import Move
from offload.scheduler.policy.full import move_target
from offload.scheduler.policy.pool import Pool, Run
from offload.scheduler.policy.queues import Queues
from offload.scheduler.policy.ranked import Ranked
from offload.scheduler.policy.round import Round
from offload.scheduler.policy.speculation import Speculation

__all__ = ["SharedBuilders"]


class _Policy(Protocol):
    """What of ``Policy`` these answers use."""

    graph: JobGraph
    _pool: Pool
    _queues: Queues
    _transfer: TransferCost | None
    _runs: dict[str, list[Run]]
    _waiting: dict[str, Run]
    _by_path: Ranked
    _speculation: Speculation

    def _release(self, run: Run, job_id: str) -> None: ...

    def _drop_copy(self, job_id: str, runs: list[Run], run: Run) -> bool: ...


class SharedBuilders:
    """``Policy``'s events from builders shared with other clients (module docstring)."""

    def _move_waiting(self: _Policy, rnd: Round, job_id: str, run: Run, now: float) -> None:
        """Move a job waiting on a full builder to a free slot elsewhere, if worth it now
        (``full``), else ask to be woken when it will be. Not while an input is being built
        again: there would be nothing to copy to the new slot (it moves once that is built)."""
        if not self.graph.inputs_done(job_id):
            return
        target, finish = move_target(
            self._queues.class_of[job_id], self.graph, self._transfer, job_id, run, now=now
        )
        if target is None:
            rnd.wake = min(rnd.wake, finish)
            return
        del self._waiting[job_id]
        self._release(run, job_id)
        moved = self._pool.take_slot(target, job_id, now, finish)
        self._runs[job_id] = [moved]
        self._by_path.add((-self.graph.critical_path(job_id), moved.copy, job_id))
        self._speculation.track(job_id, moved)
        rnd.decisions.append(Move(job_id, target.spec.name, finish, run.machine.spec.name))

    def on_machine_full(self: _Policy, job_id: str, machine: str, now: float) -> bool:
        """The copy of ``job_id`` on ``machine`` waits: every slot on that builder is held by
        other clients. Its free slots are withheld; the job may move (``Move``). True when
        that copy is to be stopped at once: the job has another copy, which goes on."""
        runs = self._runs.get(job_id)
        run = next((r for r in runs or () if r.machine.spec.name == machine), None)
        if runs is None or run is None or run.waiting_since is not None:
            return False
        self._pool.withhold(run.machine)
        run.waiting_since = now
        self._waiting[job_id] = run
        if len(runs) == 1:
            return False
        self._drop_copy(job_id, runs, run)
        return True

    def on_slot_taken(self: _Policy, job_id: str, machine: str, now: float) -> None:
        """The copy of ``job_id`` waiting on ``machine`` got its builder-side slot: it
        starts now, and is expected to take as long as planned."""
        run = self._waiting.get(job_id)
        if run is None or run.machine.spec.name != machine:
            return
        del self._waiting[job_id]
        run.waiting_since = None
        self._pool.reschedule(run, job_id, now, now + (run.end - run.start))
        self._speculation.retime(job_id, run)

    def on_slot_freed(self: _Policy, machine: str) -> None:
        """A slot on the full ``machine`` was given to this client: one is free again."""
        self._pool.restore(self._pool.machines[machine], 1)

    def on_load(self: _Policy, machine: str, slots: int) -> None:
        """``machine``'s builder is loaded by others: ``slots`` of its slots are used from now;
        copies running there go on, fewer start (``Pool.cut``)."""
        self._pool.cut(self._pool.machines[machine], slots)

    def withheld(self: _Policy, machine: str) -> int:
        """Slots of ``machine`` withheld because other clients hold them (``on_machine_full``)."""
        return self._pool.machines[machine].withheld

    def waiting(self: _Policy, machine: str) -> list[str]:
        """The jobs whose copy on ``machine`` waits for a builder-side slot."""
        return [j for j, run in self._waiting.items() if run.machine.spec.name == machine]
