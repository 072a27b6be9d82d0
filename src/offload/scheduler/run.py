"""The executor: carries out the policy's decisions on real machines.

One asyncio task per running build copy. The loop asks the policy what to start
(``next_decisions``), starts those tasks, then waits for the first task to end or for the time
the policy asked to be woken at, and reports what happened (``on_finished`` or
``on_machine_failed``). A build on a builder goes through the phases connecting -> sending
inputs -> building -> fetching outputs.

Where outputs live. The executor knows which stores hold each finished job's outputs: the
machine that built it, every machine its outputs were sent to since, and the local store (the
*home*). Outputs that must end up here (the requested ones; all of them with ``home=None``,
which is what ``--fetch-all`` and Nix do) are copied home in the background as soon as they
are built, and the build is reported when they have arrived; the others stay where they were
built. Either way a dependent on the same builder starts at once. Until a wanted output is
home it counts as needed: if its builder goes away first, the job runs again. Inputs reach a
machine from the local store, else from a builder holding them, streamed through this process
from one serve session to the other (never through a file). Nothing is registered anywhere
unless it arrived whole. When a machine goes down, outputs only it held are lost: the jobs
that made them run again if anything still needs them (``Policy.on_outputs_lost``), and a
copy that was fetching its inputs from there goes back to the queue.

Failures are data, not exceptions: a derivation that fails to build is final (its dependents
are skipped, and without keep-going nothing new starts); a machine that cannot be reached or
drops the connection is backed off by the policy and the build goes back to the queue. A build
that has lost its machine ``MAX_LOSSES`` times fails, so a broken input cannot loop forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import statistics
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeGuard

from offload.backoff import Health
from offload.errors import OffloadError, ProtocolError, SchedulerError
from offload.protocol.serve import ServeClient, copy_paths, topo_sort_infos
from offload.scheduler.dag import Job, JobState
from offload.scheduler.policy import (
    Cancel,
    MachineSlotSpec,
    Policy,
    Speculate,
    Start,
    Wait,
)
from offload.slots import SlotLocks
from offload.store.drv import Derivation
from offload.store.path import split_name_version
from offload.ui.events import (
    Event,
    JobFinished,
    JobLog,
    JobPhase,
    MachineEvent,
    Phase,
    RunFinished,
    RunStarted,
)

__all__ = [
    "BuildPlan",
    "Executor",
    "InputMoves",
    "Link",
    "PoolMember",
    "RunReport",
    "plan_jobs",
    "size_factor",
]

MAX_LOSSES = 3
# Jobs whose estimate is a guess take the median of what this run has built so far, once it
# differs from the guess by this much; beyond LEARN_LIMIT guessed jobs the update is skipped
# (each one revisits the job's ancestors).
LEARN_CHANGE = 0.25
LEARN_LIMIT = 5000
# The name local serve sessions carry (offload.transport.links.LocalLink).
LOCAL_STORE = "local"
# The local store as a holder of outputs (the local pool member builds into it).
HOME = LOCAL_STORE
# Without history, a build is assumed to take this long on a machine of speed 1.
DEFAULT_WORK = 10.0
# big-parallel builds (compilers, kernels) are long; guess them long so they start first.
BIG_PARALLEL_WORK = 60.0
# Moving one input job's outputs to a machine: a few round trips on each side (measured on
# loopback at about 20-40 ms builder to builder; see docs/BENCHMARKS.md).
MOVE_SECONDS = 0.05


class Link(Protocol):
    """A way to reach one machine's store: borrow a serve session, or stop one mid-build."""

    def session(self) -> AbstractAsyncContextManager[ServeClient]: ...

    async def cancel(self, client: ServeClient) -> None: ...


@dataclass(frozen=True)
class PoolMember:
    spec: MachineSlotSpec
    link: Link
    remote: bool  # False: the local machine, whose store is the run's hub
    slot_key: str | None = None  # shared slot-lock name (offload.slots); None: not shared
    substitute: bool = False  # builders-use-substitutes: the builder tries its caches first


class InputMoves:
    """The policy's transfer cost: ``MOVE_SECONDS`` per input job whose outputs the machine
    does not hold yet. Sizes are not known before outputs exist, and the outputs of most
    derivations move in a few round trips, so what this mostly decides is which of two equally
    fast machines takes a job: the one that already holds its inputs."""

    def __init__(self, holders: Mapping[str, set[str]], seconds: float | None = None) -> None:
        self._holders = holders
        self._seconds = MOVE_SECONDS if seconds is None else seconds

    def estimate(self, job: Job, machine: str) -> float:
        holders = self._holders
        return self._seconds * sum(1 for dep in job.deps if machine not in holders.get(dep, ()))

    def record_output(self, job_id: str, machine: str) -> None:
        """The executor records where outputs are itself (``Executor._holders``)."""


@dataclass(frozen=True)
class BuildPlan:
    """The derivations to build, dependencies first, with what each needs from the others."""

    drvs: Mapping[str, Derivation]
    order: Sequence[str]
    inputs: Mapping[str, tuple[str, ...]]  # drv -> input store paths (sources + input outputs)
    outputs: Mapping[str, tuple[str, ...]]  # drv -> its output paths
    # drv -> NAR bytes of its input sources, where known: a hint for builds without history.
    source_bytes: Mapping[str, int] = field(default_factory=dict)


def size_factor(source_bytes: int) -> float:
    """How much longer than ``DEFAULT_WORK`` a build without history is guessed to take, from
    the size of its sources: 1 up to 1 MiB, 2 at 10 MiB, 3 at 100 MiB, at most 4 (a bigger
    source tree usually means more to compile; only the order it gives matters much, and a
    run's own builds correct the guess)."""
    mib = source_bytes / 2**20
    return min(4.0, 1.0 + math.log10(max(mib, 1.0)))


@dataclass
class RunReport:
    run_id: str
    built: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # drv -> error
    skipped: list[str] = field(default_factory=list)
    finished: list[JobFinished] = field(default_factory=list)
    interrupted: bool = False
    health: dict[str, Health | None] = field(default_factory=dict)  # builders' backoff to keep

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped and not self.interrupted


def plan_jobs(
    plan: BuildPlan,
    estimates: Mapping[str, float] | None = None,
) -> list[Job]:
    """Jobs for the policy; ``estimates`` maps a name without version to speed-1 seconds."""
    estimates = estimates or {}
    jobs = []
    in_plan = set(plan.order)
    for drv_path in plan.order:
        drv = plan.drvs[drv_path]
        pname = split_name_version(drv.name)[0]
        default = BIG_PARALLEL_WORK if "big-parallel" in drv.required_features else DEFAULT_WORK
        default *= size_factor(plan.source_bytes.get(drv_path, 0))
        jobs.append(
            Job(
                id=drv_path,
                work_estimate=estimates.get(pname, default),
                deps=tuple(d for d in drv.input_drvs if d in in_plan),
                system=drv.platform,
                required_features=drv.required_features,
            )
        )
    return jobs


@dataclass(frozen=True)
class _Outcome:
    """How one build copy ended. "returned": its inputs' holder ``source`` went away (or they
    were lost before it got them), which is no fault of its own machine."""

    kind: Literal["built", "failed", "lost", "returned", "cancelled"]
    error: str | None
    started: float
    bytes_sent: int = 0
    bytes_received: int = 0
    build_seconds: float | None = None
    home: bool = False  # the outputs are in the local store too
    source: str | None = None


def _local_store_failed(error: BaseException) -> TypeGuard[ProtocolError]:
    """Whether a copy failed on the local store's side (its serve session names it)."""
    return isinstance(error, ProtocolError) and error.peer == LOCAL_STORE


def _with_error(outcome: _Outcome, error: OffloadError) -> _Outcome:
    return dataclasses.replace(outcome, error=error.message)


class _InputsGone(Exception):
    """Inputs could not be had from their holder ``source`` (None: no holder is left)."""

    def __init__(self, source: str | None, message: str) -> None:
        super().__init__(message)
        self.source = source
        self.message = message


class Executor:
    def __init__(
        self,
        plan: BuildPlan,
        members: Sequence[PoolMember],
        local: Link,
        *,
        emit: Callable[[Event], None],
        log_sink: Callable[[str, str, str], None] | None = None,
        keep_going: bool = False,
        estimates: Mapping[str, float] | None = None,
        policy: Policy | None = None,
        outputs: Sequence[str] = (),
        home: Iterable[str] | None = None,
        slots: SlotLocks | None = None,
        backoff: Mapping[str, Health] | None = None,
        unreachable: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.plan = plan
        self.members = {m.spec.name: m for m in members}
        self.local = local
        self.emit = emit
        self.log_sink = log_sink
        self.keep_going = keep_going
        self.clock = clock
        self.wall = wall
        self.outputs = tuple(outputs)
        self.slots = slots
        # Which jobs' outputs come home as soon as they are built (None: every job's).
        self._home = set(plan.order) if home is None else set(home)
        self._producer = {path: drv for drv in plan.order for path in plan.outputs[drv]}
        # Finished job -> the stores holding its outputs (empty: lost, not needed so far).
        self._holders: dict[str, set[str]] = {}
        # Running copies (job, machine) whose inputs are in place on their machine.
        self._fed: set[tuple[str, str]] = set()
        self._last_error: dict[str, str] = {}
        # Jobs history does not know: their estimates are guesses.
        known = estimates or {}
        unknown = {d for d in plan.order if split_name_version(plan.drvs[d].name)[0] not in known}
        self.policy = policy or Policy(
            plan_jobs(plan, estimates),
            [m.spec for m in members],
            transfer=InputMoves(self._holders),
            guessed=unknown,
            strict=not keep_going,
        )
        self._restored = {
            name: health for name, health in (backoff or {}).items() if name in self.members
        }
        for name, health in self._restored.items():
            until = self.clock() + (health.until - self.wall())
            self.policy.restore_down(name, health.failures, until)
        # Builders that did not answer when the run looked for outputs they already hold.
        for name, error in (unreachable or {}).items():
            if name in self.members:
                self._last_error[name] = error
                self.policy.on_machine_failed(name, self.clock())
        # Jobs estimated by DEFAULT_WORK: they learn from this run's builds.
        self._guessed = {d for d in unknown if "big-parallel" not in plan.drvs[d].required_features}
        self._guess = DEFAULT_WORK
        # A guessed job's work is this run's guess times its size factor.
        self._factor = {d: size_factor(plan.source_bytes.get(d, 0)) for d in self._guessed}
        self._observed: list[float] = []
        self.report = RunReport(run_id=uuid.uuid4().hex[:12])
        self._tasks: dict[asyncio.Task[_Outcome], tuple[str, str]] = {}
        # Outputs on their way home after their build was accepted: the copy's outcome waits
        # here to be reported once they arrive.
        self._homeward: dict[asyncio.Task[int], tuple[str, str, _Outcome]] = {}
        self._losses: dict[str, int] = {}
        self._stopping = False

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> RunReport:
        start = self.clock()
        if self.plan.order and not any(self.policy.is_up(n, start) for n in self.members):
            self._check_stuck()  # every machine is down before anything started: say so now
        for drv_path in self.policy.skipped_at_start:
            self._finish_skipped(drv_path, "")
        for drv_path, reason in self.policy.unschedulable.items():
            self.report.failed[drv_path] = f"no machine can build it: {reason}"
            self._emit_finished(drv_path, "", "failed", started=self.wall(), error=reason)
        for name, health in self._restored.items():
            self.emit(
                MachineEvent(
                    machine=name,
                    state="down",
                    message=f"backed off after {health.failures} failure(s) in earlier runs",
                    until=health.until,
                    time=self.wall(),
                )
            )
        self.emit(
            RunStarted(
                run_id=self.report.run_id,
                total=len(self.plan.order),
                machines=tuple(self.members),
                estimate=self._estimate_makespan(),
                time=self.wall(),
            )
        )
        try:
            await self._loop()
        except BaseException:
            self.report.interrupted = True
            raise
        finally:
            await self._stop_all()
            self.report.health = self.health()
            self.emit(
                RunFinished(
                    run_id=self.report.run_id,
                    built=len(self.report.built),
                    failed=len(self.report.failed),
                    skipped=len(self.report.skipped),
                    elapsed=self.clock() - start,
                    outputs=self.outputs if self.report.ok else (),
                    time=self.wall(),
                )
            )
        return self.report

    def health(self) -> dict[str, Health | None]:
        """Each builder's backoff to remember for later runs (None: healthy)."""
        now, wall = self.clock(), self.wall()
        result: dict[str, Health | None] = {}
        for name, member in self.members.items():
            if not member.remote:
                continue
            failures = self.policy.failures(name)
            until = self.policy.down_until(name)
            down = failures > 0 and until > now
            result[name] = Health(failures, wall + (until - now)) if down else None
        return result

    def _estimate_makespan(self) -> float:
        graph = self.policy.graph
        capacity = sum(m.spec.speed * m.spec.slots for m in self.members.values()) or 1.0
        fastest = max((m.spec.speed for m in self.members.values()), default=1.0)
        return max(graph.graph_critical_path() / fastest, graph.total_work() / capacity)

    async def _loop(self) -> None:
        while True:
            wake: float | None = None
            if not self._stopping:
                for decision in self.policy.next_decisions(self.clock()):
                    match decision:
                        case Start(job=job, machine=machine):
                            self._start(job, machine, speculative=False)
                        case Speculate(job=job, machine=machine):
                            self._start(job, machine, speculative=True)
                        case Wait(until=until):
                            wake = until
            if not self._tasks and not self._homeward:
                # Nothing runs, so a wake-up could only be for a backed-off machine: rather
                # than sleep out its backoff, stop and say why (_check_stuck).
                break
            timeout = None if wake is None else max(0.0, wake - self.clock())
            done, _ = await asyncio.wait(
                {*self._tasks, *self._homeward},
                timeout=timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
            for arrived in [task for task in self._homeward if task in done]:
                self._arrived(arrived)
            for task in [task for task in self._tasks if task in done]:
                await self._settle(task)
        self._check_stuck()

    def _check_stuck(self) -> None:
        graph = self.policy.graph
        left = graph.count(JobState.READY) + graph.count(JobState.PENDING)
        if left and not self._stopping:
            now = self.clock()
            down = [
                f"{name}: {self._last_error.get(name, 'backed off')}"
                for name in self.members
                if not self.policy.is_up(name, now)
            ]
            msg = f"{left} derivation(s) could not be built: no machine can take them"
            raise SchedulerError(
                msg + (f" ({'; '.join(down)})" if down else ""),
                hint="check the builders with `ssh` or `offload machines`; -j N builds locally; "
                "naming a builder with --on retries it at once",
            )

    def _start(self, drv_path: str, machine: str, *, speculative: bool) -> None:
        task = asyncio.create_task(
            self._build(drv_path, self.members[machine], speculative=speculative),
            name=f"{machine}:{drv_path}",
        )
        self._tasks[task] = (drv_path, machine)

    async def _settle(self, task: asyncio.Task[_Outcome]) -> None:
        entry = self._tasks.pop(task, None)
        if entry is None:
            return  # a losing copy, cancelled while settling its twin in the same batch
        drv_path, machine = entry
        self._fed.discard(entry)
        now = self.clock()
        if task.cancelled():
            return  # its machine went down and the policy queued the job again
        outcome = task.result()
        match outcome.kind:
            case "cancelled":
                return
            case "lost":
                self._losses[drv_path] = self._losses.get(drv_path, 0) + 1
                if self._losses[drv_path] >= MAX_LOSSES:
                    self._fail(drv_path, machine, outcome, now)
                self._machine_failed(machine, outcome.error or "connection lost", now)
                self._emit_outcome(drv_path, machine, "lost", outcome)
            case "returned":
                if outcome.source is None:
                    # Lost inputs are made again before anything needs them (_undo_lost); if
                    # that ever falls short, fail rather than retry forever.
                    self._losses[drv_path] = self._losses.get(drv_path, 0) + 1
                    if self._losses[drv_path] >= MAX_LOSSES:
                        self._fail(drv_path, machine, outcome, now)
                        return
                else:
                    self._machine_failed(outcome.source, outcome.error or "connection lost", now)
                    why = f"the holder of its inputs, {outcome.source}, went away"
                    outcome = dataclasses.replace(outcome, error=why)
                self.policy.on_returned(drv_path, machine)
                self._emit_outcome(drv_path, machine, "cancelled", outcome)
            case "built":
                finished = self.policy.on_finished(drv_path, machine, now, ok=True)
                if not finished.accepted:
                    return
                self._holders[drv_path] = {machine if self.members[machine].remote else HOME}
                if outcome.home:
                    self._holders[drv_path].add(HOME)
                self._learn(drv_path, machine, outcome)
                if drv_path not in self.report.built:  # built again after its outputs were lost
                    self.report.built.append(drv_path)
                if drv_path in self._home and not outcome.home:
                    self._send_home(drv_path, machine, outcome)
                else:
                    self._emit_outcome(drv_path, machine, "built", outcome)
                for cancel in finished.cancel:
                    await self._cancel(cancel)
            case "failed":
                self._fail(drv_path, machine, outcome, now)

    def _send_home(self, drv_path: str, machine: str, outcome: _Outcome) -> None:
        """Copy a wanted output home in the background: its dependents need not wait for it
        (they get it from the builder, or from here once it has arrived)."""
        task = asyncio.create_task(self._fetch_home(drv_path, machine), name=f"home:{drv_path}")
        self._homeward[task] = (drv_path, machine, outcome)

    async def _fetch_home(self, drv_path: str, machine: str) -> int:
        self._phase(drv_path, machine, "fetching", speculative=False)
        link = self.members[machine].link
        async with link.session() as src, self.local.session() as local:
            return await send_closure(src, local, self.plan.outputs[drv_path])

    def _arrived(self, task: asyncio.Task[int]) -> None:
        drv_path, machine, outcome = self._homeward.pop(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            if drv_path in self._holders:
                self._holders[drv_path].add(HOME)
            arrived = dataclasses.replace(outcome, bytes_received=task.result(), home=True)
            self._emit_outcome(drv_path, machine, "built", arrived)
        elif _local_store_failed(error):
            # The local store refused the outputs: final, as for any other copy home.
            self.report.failed[drv_path] = error.message
            self._emit_outcome(drv_path, machine, "failed", _with_error(outcome, error))
            if not self.keep_going:
                self._stopping = True
        elif isinstance(error, OffloadError):
            # The builder went away with outputs this machine still needs: built again.
            self._emit_outcome(drv_path, machine, "lost", _with_error(outcome, error))
            self._machine_failed(machine, error.message, self.clock())
        else:
            raise error

    def _machine_failed(self, machine: str, error: str, now: float) -> None:
        """Back ``machine`` off, stop its builds (the policy queued them again), and have
        outputs that only it held made again where they are still needed."""
        self._last_error[machine] = error
        down = self.policy.on_machine_failed(machine, now)
        self.emit(
            MachineEvent(
                machine=machine,
                state="down",
                message=error,
                until=self.wall() + (down.until - now),
                time=self.wall(),
            )
        )
        for other_task, (other, where) in list(self._tasks.items()):
            if where == machine and other in down.returned:
                other_task.cancel()
        for holders in self._holders.values():
            holders.discard(machine)
        self._undo_lost()

    def _undo_lost(self) -> None:
        """Jobs whose outputs are nowhere any more and are still needed run again, with any
        of their dependencies in the same state."""
        graph = self.policy.graph
        stack = [job for job, where in self._holders.items() if not where and self._needed(job)]
        undo: set[str] = set()
        while stack:
            job = stack.pop()
            if job in undo:
                continue
            undo.add(job)
            stack.extend(dep for dep in graph.job(job).deps if not self._holders.get(dep, {HOME}))
        for job in undo:
            del self._holders[job]
        if undo:
            self.policy.on_outputs_lost(undo)

    def _needed(self, job: str) -> bool:
        """Whether this machine or a dependent still has to receive this job's outputs."""
        if job in self._home and HOME not in self._holders.get(job, ()):
            return True
        graph = self.policy.graph
        for dependent in graph.dependents(job):
            state = graph.state(dependent)
            if state in {JobState.PENDING, JobState.READY}:
                return True
            if state is JobState.RUNNING and any(
                (dependent, where) not in self._fed for where in self.policy.copies(dependent)
            ):
                return True
        return False

    def _learn(self, drv_path: str, machine: str, outcome: _Outcome) -> None:
        """Improve guessed estimates with what this run has measured (no history yet)."""
        if drv_path not in self._guessed:
            return
        self._guessed.discard(drv_path)
        speed = self.members[machine].spec.speed
        seconds = outcome.build_seconds
        if seconds is None:
            seconds = max(0.0, self.wall() - outcome.started)
        self._observed.append(seconds * speed / self._factor[drv_path])
        median = statistics.median(self._observed)
        if abs(median - self._guess) <= LEARN_CHANGE * self._guess:
            return
        self._guess = median
        if len(self._guessed) > LEARN_LIMIT:
            return
        graph = self.policy.graph
        for job in self._guessed:
            if graph.state(job) in {JobState.PENDING, JobState.READY}:
                self.policy.on_estimate(job, median * self._factor[job])

    def _fail(self, drv_path: str, machine: str, outcome: _Outcome, now: float) -> None:
        finished = self.policy.on_finished(drv_path, machine, now, ok=False)
        self.report.failed[drv_path] = outcome.error or "failed"
        self._emit_outcome(drv_path, machine, "failed", outcome)
        for skipped in finished.skipped:
            self._finish_skipped(skipped, drv_path)
        if not self.keep_going:
            self._stopping = True

    def _finish_skipped(self, drv_path: str, cause: str) -> None:
        self.report.skipped.append(drv_path)
        reason = f"dependency {cause} failed" if cause else "cannot be built"
        self._emit_finished(drv_path, "", "skipped", started=self.wall(), error=reason)

    async def _cancel(self, cancel: Cancel) -> None:
        for task, (drv_path, machine) in list(self._tasks.items()):
            if drv_path == cancel.job and machine == cancel.machine:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                self._tasks.pop(task, None)

    async def _stop_all(self) -> None:
        tasks: list[asyncio.Task[Any]] = [*self._tasks, *self._homeward]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._homeward.clear()

    def _emit_outcome(
        self,
        drv_path: str,
        machine: str,
        status: Literal["built", "failed", "lost", "cancelled"],
        outcome: _Outcome,
    ) -> None:
        self._emit_finished(
            drv_path,
            machine,
            status,
            started=outcome.started,
            error=outcome.error,
            sent=outcome.bytes_sent,
            received=outcome.bytes_received,
            build_seconds=outcome.build_seconds,
        )

    def _emit_finished(
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
        event = JobFinished(
            drv_path=drv_path,
            name=self.plan.drvs[drv_path].name,
            machine=machine,
            status=status,
            started=started,
            finished=self.wall(),
            bytes_sent=sent,
            bytes_received=received,
            error=error,
            time=self.wall(),
            build_seconds=build_seconds,
        )
        self.report.finished.append(event)
        self.emit(event)

    # -- one build copy ----------------------------------------------------------------------

    def _phase(self, drv_path: str, machine: str, phase: Phase, *, speculative: bool) -> None:
        jobs = self.policy.graph.job(drv_path)
        speed = self.members[machine].spec.speed
        self.emit(
            JobPhase(
                drv_path=drv_path,
                name=self.plan.drvs[drv_path].name,
                machine=machine,
                phase=phase,
                estimate=jobs.work_estimate / speed,
                time=self.wall(),
                speculative=speculative,
            )
        )

    async def _build(self, drv_path: str, member: PoolMember, *, speculative: bool) -> _Outcome:
        started = self.wall()
        name = member.spec.name
        drv = self.plan.drvs[drv_path]
        sent = received = 0
        client: ServeClient | None = None
        try:
            async with contextlib.AsyncExitStack() as stack:
                if self.slots is not None and member.slot_key is not None:
                    # Other offload runs and Nix's own hook may hold some of this machine's slots.
                    await stack.enter_async_context(
                        self.slots.hold(
                            member.slot_key,
                            member.spec.slots,
                            lambda: self._phase(drv_path, name, "queued", speculative=speculative),
                        )
                    )
                self._phase(drv_path, name, "connecting", speculative=speculative)
                client = await stack.enter_async_context(member.link.session())
                client.on_log = self._log_handler(drv_path, name)
                target = name if member.remote else HOME
                sources = self._sources(drv_path, target)
                if sources:
                    self._phase(drv_path, name, "sending", speculative=speculative)
                    moved = await self._feed(sources, client, target, member.substitute)
                    sent, received = (moved, 0) if member.remote else (0, moved)
                self._fed.add((drv_path, name))
                self._phase(drv_path, name, "building", speculative=speculative)
                build_start = self.clock()
                inputs = self.plan.inputs[drv_path]
                result = await client.build_derivation(drv_path, drv, input_srcs=inputs)
                build_seconds = self.clock() - build_start
                if not result.success:
                    return _Outcome("failed", result.error_msg, started, sent, received)
                client.on_log = None
            home = not member.remote
            return _Outcome("built", None, started, sent, received, build_seconds, home)
        except _InputsGone as exc:
            return _Outcome("returned", exc.message, started, sent, received, source=exc.source)
        except asyncio.CancelledError:
            if client is not None:
                with contextlib.suppress(OffloadError):
                    await member.link.cancel(client)
            raise
        except OffloadError as exc:
            # The local store refusing or dropping a copy is final, not the builder's fault.
            kind: Literal["failed", "lost"] = "failed" if _local_store_failed(exc) else "lost"
            return _Outcome(kind, exc.message, started, sent, received)

    def _sources(self, drv_path: str, target: str) -> dict[str, list[str]]:
        """The inputs ``target`` may lack, grouped by the store to copy them from."""
        groups: dict[str, list[str]] = {}
        for path in self.plan.inputs[drv_path]:
            job = self._producer.get(path)
            holders = {HOME} if job is None else self._holders.get(job)
            if not holders:
                raise _InputsGone(None, f"the outputs of {job} were lost with their builder")
            if target in holders:
                continue
            # The local store is always there and a single hop from anywhere.
            source = HOME if HOME in holders else min(holders)
            groups.setdefault(source, []).append(path)
        return groups

    async def _feed(
        self, sources: Mapping[str, list[str]], client: ServeClient, target: str, substitute: bool
    ) -> int:
        """Copy each group of inputs from its store to ``client``'s; returns bytes moved."""
        moved = 0
        for source, paths in sources.items():
            link = self.local if source == HOME else self.members[source].link
            try:
                async with link.session() as src:
                    moved += await send_closure(src, client, paths, substitute=substitute)
            except OffloadError as exc:
                # Failures of the source's own session are the source's; the rest (the
                # target, the local store) are handled as for any other copy.
                peer = getattr(exc, "peer", None)
                if source == HOME or peer in {target, LOCAL_STORE}:
                    raise
                raise _InputsGone(source, exc.message) from exc
            for path in paths:
                job = self._producer.get(path)
                if job is not None and job in self._holders:
                    self._holders[job].add(target)
        return moved

    def _log_handler(self, drv_path: str, machine: str) -> Callable[[str], None]:
        name = self.plan.drvs[drv_path].name

        def handle(line: str) -> None:
            if self.log_sink is not None:
                self.log_sink(drv_path, machine, line)
            self.emit(JobLog(drv_path, name, machine, line, self.wall()))

        return handle


async def send_closure(
    src: ServeClient, dst: ServeClient, paths: Sequence[str], *, substitute: bool = False
) -> int:
    """Make ``paths`` and their closure valid in ``dst``, copying what it lacks from ``src``.

    With ``substitute``, ``dst`` first fetches what it can from its own substituters
    (Nix's builders-use-substitutes), and only the rest is sent.
    """
    if not paths:
        return 0
    # Only what dst lacks is looked up in src: the rest may be valid in dst alone.
    wanted = await _missing(dst, paths)
    if not wanted:
        return 0
    closure = await src.query_closure(wanted)
    missing = await _missing(dst, closure, substitute=substitute)
    if not missing:
        return 0
    infos = await src.query_path_infos(missing)
    return await copy_paths(src, dst, topo_sort_infos(infos))


async def _missing(
    store: ServeClient, paths: Sequence[str] | set[str], *, substitute: bool = False
) -> set[str]:
    return set(paths) - await store.query_valid_paths(paths, substitute=substitute)
