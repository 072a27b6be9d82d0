"""Emitting what a run does: the executor's side of ``offload.ui.events``.

Every event carries wall-clock time; every job that ends (built, failed, lost, cancelled,
skipped) is both emitted and kept in the run's ``RunReport``, which history is made from.
Build log lines go to the log sink (if any) and out as ``JobLog`` events. A build starting and
a job ending carry what the run still needs by the plan (``remaining``), for the view's ETA;
skipped jobs do not (they come in bursts, and the failure before them carried it). Planning
again costs milliseconds per hundred jobs left, in the run's own thread, so it is done at most
once per ``PLAN_SHARE`` times its last cost (the ETA takes a fiftieth of the time at most: each
plan holds up the loop that starts the next builds, and with a tenth 2,000 trivial builds took
5% longer); an event in between carries None, and the last one always carries 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Literal

from offload.history.records import RunReport
from offload.scheduler.policy import Policy
from offload.scheduler.run.plan import BuildPlan, PoolMember
from offload.scheduler.run.remaining import remaining_seconds
from offload.ui.events import (
    Event,
    JobFinished,
    JobLog,
    JobPhase,
    MachineEvent,
    MachineState,
    Phase,
    RunFinished,
    RunStarted,
)

__all__ = ["PLAN_SHARE", "RunEvents", "RunReport"]

PLAN_SHARE = 50


class RunEvents:
    def __init__(
        self,
        plan: BuildPlan,
        members: Mapping[str, PoolMember],
        policy: Policy,
        report: RunReport,
        *,
        emit: Callable[[Event], None],
        log_sink: Callable[[str, str, str], None] | None,
        wall: Callable[[], float],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.plan = plan
        self.members = members
        self.policy = policy
        self.report = report
        self.emit = emit
        self.log_sink = log_sink
        self.wall = wall
        self.clock = clock  # the policy's clock (which machines are up)
        self._building: dict[tuple[str, str], float] = {}  # (drv, machine) -> since (wall)
        # (drv, machine) -> when the copy first did more than wait there (wall)
        self._working: dict[tuple[str, str], float] = {}
        self._planned = (0.0, 0.0)  # when the last plan was made (perf_counter), its cost
        self._down: set[str] = set()  # machines said down and not said up since

    def run_started(self, machines: Sequence[str], estimate: float) -> None:
        self.emit(
            RunStarted(
                run_id=self.report.run_id,
                total=len(self.plan.order),
                machines=tuple(machines),
                estimate=estimate,
                time=self.wall(),
                speeds=tuple(self.members[m].spec.speed for m in machines),
                slots=tuple(self.members[m].spec.slots for m in machines),
            )
        )

    def run_finished(self, elapsed: float, outputs: tuple[str, ...], *, cut: bool = False) -> None:
        """``cut``: the run ended before its end (an error of its own: stranded with no
        machine left), as an interrupted one is told: not "finished"."""
        report = self.report
        self.emit(
            RunFinished(
                run_id=report.run_id,
                built=len(report.built),
                failed=len(report.failed),
                skipped=len(report.skipped),
                elapsed=elapsed,
                outputs=outputs if report.ok else (),
                time=self.wall(),
                interrupted=report.interrupted or cut,
                incomplete=report.stranded,
            )
        )

    def machine_down(self, machine: str, message: str, until: float) -> None:
        """``until`` is wall-clock time."""
        self._down.add(machine)
        self.emit(
            MachineEvent(
                machine=machine, state="down", message=message, until=until, time=self.wall()
            )
        )

    def machine_up(self, machine: str, message: str) -> None:
        self._down.discard(machine)
        self.emit(
            MachineEvent(machine=machine, state="up", message=message, until=None, time=self.wall())
        )

    def in_use_again(self, machine: str) -> None:
        """A copy starts on ``machine``: one said down and not up since has its backoff over
        (the policy tries it again without a word), which is said, as its fall was: the
        summary listed it as down though it built again."""
        if machine in self._down:
            self.machine_up(machine, "its backoff ended: it takes work again")

    def machine_note(
        self, machine: str, state: MachineState, message: str, slots: int | None = None
    ) -> None:
        self.emit(
            MachineEvent(
                machine=machine,
                state=state,
                message=message,
                until=None,
                time=self.wall(),
                slots=slots,
            )
        )

    def phase(self, drv_path: str, machine: str, phase: Phase, *, speculative: bool) -> None:
        work = self.policy.graph.work(drv_path)  # as learnt so far, not the job's first guess
        speed = self.members[machine].spec.speed
        building = phase == "building"
        if building:
            self._building[drv_path, machine] = self.wall()
        if phase not in ("queued", "connecting"):
            self._working.setdefault((drv_path, machine), self.wall())
        self.emit(
            JobPhase(
                drv_path=drv_path,
                name=self.plan.drvs[drv_path].name,
                machine=machine,
                phase=phase,
                estimate=work / speed,
                time=self.wall(),
                speculative=speculative,
                remaining=self.remaining() if building else None,
            )
        )

    def building(self, drv_path: str, machine: str) -> bool:
        """Whether the copy of ``drv_path`` on ``machine`` began building (and has not ended)."""
        return (drv_path, machine) in self._building

    def step_handler(self, drv_path: str, machine: str) -> Callable[[str, str], None]:
        """Where a builder's own phases of ``drv_path`` go (``StoreClient.on_phase``): marks
        within "building" (``JobPhase.step``)."""

        def handle(_drv: str, step: str) -> None:
            work = self.policy.graph.work(drv_path)
            self.emit(
                JobPhase(
                    drv_path=drv_path,
                    name=self.plan.drvs[drv_path].name,
                    machine=machine,
                    phase="building",
                    estimate=work / self.members[machine].spec.speed,
                    time=self.wall(),
                    step=step,
                )
            )

        return handle

    def finished(
        self,
        drv_path: str,
        machine: str,
        status: Literal["built", "failed", "cancelled", "lost", "skipped"],
        *,
        started: float,
        error: str | None = None,
        sent: int = 0,
        received: int = 0,
        build_seconds: float | None = None,
    ) -> None:
        self._building.pop((drv_path, machine), None)
        now = self.wall()
        working = self._working.pop((drv_path, machine), now)
        event = JobFinished(
            drv_path=drv_path,
            name=self.plan.drvs[drv_path].name,
            machine=machine,
            status=status,
            started=started,
            finished=now,  # the moment ``waited`` is counted to: a copy that only waited
            bytes_sent=sent,  # waited all of it (``ui.summary``), whatever the clock did
            bytes_received=received,
            error=error,
            time=now,
            build_seconds=build_seconds,
            remaining=None if status == "skipped" else self.remaining(),
            waited=max(0.0, min(working, now) - started) if machine else 0.0,
        )
        self.report.finished.append(event)
        self.emit(event)

    def remaining(self, joining: Collection[str] = ()) -> float | None:
        """Seconds the run still needs by the plan, from now (``remaining_seconds``), over the
        machines up and those ``joining`` (still connecting: at the run's start); None when
        the last plan was too recent for its cost."""
        if self.policy.graph.finished:
            return 0.0
        begun = time.perf_counter()
        last, cost = self._planned
        if begun - last < PLAN_SHARE * cost:
            return None
        now, wall = self.clock(), self.wall()
        done: dict[str, float] = {}
        for (drv_path, machine), since in self._building.items():
            work = (wall - since) * self.members[machine].spec.speed
            done[drv_path] = max(done.get(drv_path, 0.0), work)
        up = [
            m.spec
            for name, m in self.members.items()
            if self.policy.is_up(name, now) or name in joining
        ]
        left = remaining_seconds(self.policy.graph, done, up)
        ended = time.perf_counter()
        self._planned = (ended, ended - begun)
        return left

    def log_handler(self, drv_path: str, machine: str) -> Callable[[str], None]:
        name = self.plan.drvs[drv_path].name

        def handle(line: str) -> None:
            if self.log_sink is not None:
                self.log_sink(drv_path, machine, line)
            self.emit(JobLog(drv_path, name, machine, line, self.wall()))

        return handle
