"""The executor's loop: carries out the policy's decisions on real machines.

One asyncio task per running build copy. The loop asks the policy what to start
(``next_decisions``), starts those tasks, then waits for the first task to end or for the time
the policy asked to be woken at, and reports what happened (``on_finished`` or
``on_machine_failed``). Outputs wanted here are copied home in the background as soon as they
are built, and the build is reported when they have arrived; either way a dependent on the same
builder starts at once.

Failures are data, not exceptions: a derivation that fails to build is final (its dependents
are skipped, and without keep-going nothing new starts); a machine that cannot be reached or
drops the connection is backed off by the policy (said once per backoff, however many builds
it took down) and the build goes back to the queue. A build that has lost its machine
``MAX_LOSSES`` times fails, so a broken input cannot loop forever.
When a machine goes down, a copy that was fetching its inputs from there goes back to the
queue. A copy that waits on a builder full of other clients' builds is reported to the policy,
which may move it (``Move``: that copy is stopped and the job starts elsewhere; ``full``). A
builder's load, reported at every session start there, sets its usable slots (``loads``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from offload.backoff import Health
from offload.errors import OffloadError, SchedulerError
from offload.history.records import RunReport
from offload.protocol.serve import BuildOptions
from offload.scheduler.dag import JobState
from offload.scheduler.policy import Move, Policy, Speculate, Start, Wait
from offload.scheduler.run.copy import AfterHome, BuildCopies
from offload.scheduler.run.endings import MAX_LOSSES, Endings
from offload.scheduler.run.events import RunEvents
from offload.scheduler.run.full import FullBuilders
from offload.scheduler.run.holders import Holders
from offload.scheduler.run.learning import Learning
from offload.scheduler.run.loads import Loads
from offload.scheduler.run.outcome import Outcome
from offload.scheduler.run.plan import BuildPlan, InputMoves, MemberLink, PoolMember, plan_jobs
from offload.scheduler.run.reconnects import Reconnects
from offload.scheduler.search import PLAIN, Tuning, tune
from offload.slots import SlotLocks
from offload.typing_compat import override
from offload.ui.events import Event

__all__ = ["MAX_LOSSES", "Executor"]

logger = logging.getLogger(__name__)


class Executor(Endings):
    def __init__(
        self,
        plan: BuildPlan,
        members: Sequence[PoolMember],
        local: MemberLink,
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
        earlier_failures: Mapping[str, int] | None = None,
        unreachable: Mapping[str, str] | None = None,
        faults_here: Collection[str] = (),  # of those, left out for this host's fault
        joining: Mapping[str, asyncio.Task[None]] | None = None,
        explain: Callable[[str, str], str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        build_options: BuildOptions | None = None,
        local_boot_id: str | None = None,  # this host's kernel (offload.load)
        after_home: AfterHome | None = None,
        stranded_hint: str | None = None,  # work left no machine can take: ``Pool``'s
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
        self._holders = Holders(plan, home)
        self._learning = Learning(plan, estimates, wall)
        # Tuned for the machines the run starts with, as the dry run plans (``build.dryrun``).
        down = {*(unreachable or ()), *(backoff or ())}
        self.tuning: Tuning = PLAIN  # a policy given is taken as it is
        if policy is None:
            policy, self.tuning = self._new_policy(members, estimates, down)
        self.policy = policy
        self._explain = explain or (lambda _machine, error: error)  # the user's words for why
        self._stranded_hint = stranded_hint
        # 12 random hex digits, as uuid4().hex[:12] were (uuid imports platform, ~2 ms).
        self.report = RunReport(run_id=secrets.token_hex(6))
        self._events = RunEvents(
            plan, self.members, self.policy, self.report, emit=emit, log_sink=log_sink,
            wall=wall, clock=clock)  # fmt: skip
        self._track_joining(joining or {}, unreachable or {})
        self._faults_here = frozenset(faults_here)
        self._track_copies()
        self._restored = self._restore(backoff or {}, earlier_failures or {})
        self._poke = asyncio.Event()  # set when a copy's news may change the decisions
        self._full, self.loads = self._capacity_watchers(local_boot_id)
        self._reconnects = Reconnects(self.members, clock=self.clock)
        self._copies = self._build_copies(slots, build_options, after_home)

    def _track_joining(
        self, joining: Mapping[str, asyncio.Task[None]], unreachable: Mapping[str, str]
    ) -> None:
        """Builders still connecting, held out of the run until their task ends (``_joined``),
        and those that could not be reached, in the user's words."""
        self._joining = {task: name for name, task in joining.items()}
        self._unreachable = {
            name: self._explain(name, error) for name, error in unreachable.items()
            if name in self.members
        }  # fmt: skip

    def _track_copies(self) -> None:
        """The run's copies as they go: under way, since when, coming home, lost, halted; and
        the builders that fell or built (``health``)."""
        self._tasks: dict[asyncio.Task[Outcome], tuple[str, str]] = {}
        self._since: dict[asyncio.Task[Outcome], float] = {}  # when each copy started (wall)
        # Outputs on their way home after their build was accepted: the copy's outcome waits
        # here to be reported once they arrive.
        self._homeward: dict[asyncio.Task[int], tuple[str, str, str, Outcome]] = {}
        self._losses: dict[str, int] = {}
        self._last_error: dict[str, str] = {}  # each machine's, as last said
        self._fell: set[str] = set()  # builders this run backed off (``health``)
        self._built_on: set[str] = set()  # and those that built for it
        self._told: set[asyncio.Task[Outcome]] = set()
        self._lost_with: dict[str, str] = {}
        self._stopping = False
        self._stopped: dict[asyncio.Task[Outcome], str] = {}  # why each was stopped

    def _capacity_watchers(self, local_boot_id: str | None) -> tuple[FullBuilders, Loads]:
        """What cuts a builder's slots during the run: others filling its own slots (full) and
        its load (offload.load)."""
        full = FullBuilders(
            self.policy, self.members, self._events, clock=self.clock, poke=self._poke.set
        )
        loads = Loads(
            self.policy, self.members, self._events, clock=self.clock, poke=self._poke.set,
            local_boot_id=local_boot_id,
        )  # fmt: skip
        return full, loads

    def _build_copies(
        self,
        slots: SlotLocks | None,
        build_options: BuildOptions | None,
        after_home: AfterHome | None,
    ) -> BuildCopies:
        # Nix's per-build settings (timeouts, log size) are sent with every build.
        return BuildCopies(
            self.plan, self.members, self.local, self._holders, self._events, slots=slots,
            wall=self.wall, clock=self.clock,
            options=BuildOptions() if build_options is None else build_options,
            on_full=self._full.full, on_slot=self._full.slot_taken,
            expected_end=self._expected_end, after_home=after_home,
        )  # fmt: skip

    def _expected_end(self, drv_path: str, machine: str) -> float:
        """When a build of ``drv_path`` begun on ``machine`` now is expected to end (wall
        clock), from the work the run has learnt, as the live view estimates it."""
        return self.wall() + self.policy.graph.work(drv_path) / self.members[machine].spec.speed

    def _new_policy(
        self,
        members: Sequence[PoolMember],
        estimates: Mapping[str, float] | None,
        down: Collection[str],
    ) -> tuple[Policy, Tuning]:
        """The run's policy, and the knobs it was tuned with."""
        local = next((m.spec for m in members if not m.remote), None)
        jobs, specs = plan_jobs(self.plan, estimates, local), [m.spec for m in members]
        up = [spec for spec in specs if spec.name not in down]
        # A plan is tuned to history's estimates, never to guesses (``scheduler.search``).
        known = jobs and up and not self._learning.unknown
        tuning = tune(jobs, up) if known else PLAIN
        if tuning.tuned:
            logger.debug(
                "plan tuned in %d tries: %.2f s, plain %.2f s",
                tuning.tries, tuning.planned, tuning.plain,
            )  # fmt: skip
        policy = Policy(
            jobs,
            specs,
            transfer=InputMoves(self._holders.where),
            guessed=self._learning.unknown,
            strict=not self.keep_going,
            slack_share=tuning.slack_share,
            weights=tuning.weights,
        )
        return policy, tuning

    def _restore(
        self, backoff: Mapping[str, Health], earlier: Mapping[str, int]
    ) -> dict[str, Health]:
        """Tell the policy which builders are down or still connecting before the run starts,
        and the failures ``earlier`` runs counted of the others (a backoff that ended, or one
        the run was told to try anyway); returns the backoff kept from earlier runs, to
        announce when the run starts."""
        restored = {name: health for name, health in backoff.items() if name in self.members}
        self._started_down = frozenset(restored)
        for name, failures in earlier.items():
            if name in self.members and name not in restored:
                self.policy.remember_failures(name, failures)
        for name, health in restored.items():
            until = self.clock() + (health.until - self.wall())
            self.policy.restore_down(name, health.failures, until)
            if health.reason is not None:  # kept for the next run unless this one learns more
                self._last_error[name] = health.reason
        # Builders that did not answer when the run looked for outputs they already hold.
        for name, error in self._unreachable.items():
            self._last_error[name] = error
            self.policy.on_machine_failed(name, self.clock())
            if name not in self._faults_here:  # this host's fault: not kept against it
                self._fell.add(name)
        for name in self._joining.values():
            self.policy.hold(name)
        return restored

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> RunReport:
        start = self.clock()
        stuck = (
            self.plan.order
            and not self._joining
            and not any(self.policy.is_up(n, start) for n in self.members)
        )
        if stuck and not self._restored:
            # Every machine is down before anything started: one error line names each and
            # why, and the run never opens; --json has each down all the same (the plain view
            # leaves those out: the error line says them). Those an earlier run backed off are
            # tried again by the loop's first turn (``_retry_restored``). Told only when it
            # does stop: one that goes on (-k, nothing left that a machine could build) tells
            # them once, opened.
            try:
                self._check_stuck(opened=False)
            except SchedulerError:
                self._tell_unreachable(start)
                raise
        # The run's first event opens it (its machines, its plan's makespan: the live view's
        # first ETA, history's "scheduler expected"); who is down follows.
        planned = self._events.remaining(joining=set(self._joining.values()))
        if planned is None:  # no machine up: the bound, for what it says
            planned = self._estimate_makespan()
        self._events.run_started(tuple(self.members), planned)
        for name, health in self._restored.items():
            self._events.machine_down(name, health.said(name), health.until)
        self._tell_unreachable(start)
        self._settle_at_start()
        ended = False
        try:
            await self._loop()
            ended = True
        except (asyncio.CancelledError, KeyboardInterrupt):
            # Stopped (Ctrl-C, SIGTERM): not a run that found no machine, nor a bug's end.
            self.report.interrupted = True
            raise
        finally:
            await self._stop_all()
            self.report.health = self.health()
            self._events.run_finished(self.clock() - start, self.outputs, cut=not ended)
        return self.report

    def _settle_at_start(self) -> None:
        """Derivations the run ends as it starts (they are in its total): with keep-going,
        those no machine can build fail, on no machine, and what needs them is skipped."""
        for drv_path, reason in self.policy.unschedulable.items():
            why = f"no machine can build it: {reason}"
            self.report.failed[drv_path] = why
            self._events.finished(drv_path, "", "failed", started=self.wall(), error=why)
        for drv_path in self.policy.skipped_at_start:
            self._finish_skipped(drv_path, "")

    def health(self) -> dict[str, Health | None]:
        """The backoff this run learnt, to remember for later runs: each builder it backed
        off, and each that built for it or came back from a backoff (None: healthy). Those it
        learnt nothing of (left backed off, or not used) are left out: what other processes
        wrote of them meanwhile (the hook's backoff, ``offload machines --reset``) stands."""
        now, wall = self.clock(), self.wall()
        result: dict[str, Health | None] = {}
        for name, member in self.members.items():
            failures = self.policy.failures(name)
            healthy = failures == 0 and (name in self._started_down or name in self._built_on)
            learnt = name in self._fell or healthy
            if not member.remote or not learnt:
                continue
            until = self.policy.down_until(name)
            down = failures > 0 and until > now
            reason = self._last_error.get(name)
            result[name] = Health(failures, wall + (until - now), reason) if down else None
        return result

    def _estimate_makespan(self) -> float:
        graph = self.policy.graph
        capacity = sum(m.spec.speed * m.spec.slots for m in self.members.values()) or 1.0
        fastest = max((m.spec.speed for m in self.members.values()), default=1.0)
        return max(graph.graph_critical_path() / fastest, graph.total_work() / capacity)

    async def _loop(self) -> None:
        poked = asyncio.create_task(self._poke.wait())
        try:
            while await self._step(poked):
                if poked.done():
                    self._poke.clear()
                    poked = asyncio.create_task(self._poke.wait())
        finally:
            poked.cancel()
        self._check_stuck()

    def _decide(self) -> float | None:
        """Carry out the policy's decisions; returns when it asked to be woken."""
        wake: float | None = None
        for decision in self.policy.next_decisions(self.clock()):
            if self._stopping:
                # A derivation failed just now (``_fail_lost``): nothing new starts, and what
                # the policy placed goes back to it, never started (counted as not built).
                if isinstance(decision, Start | Speculate):
                    self.policy.on_returned(decision.job, decision.machine)
                continue
            match decision:
                case Start(job=job, machine=machine) if self._lost_too_often(job):
                    self._fail_lost(job, machine, self.clock())
                case Start(job=job, machine=machine):
                    self._start(job, machine, speculative=False)
                case Speculate(job=job, machine=machine):
                    self._start(job, machine, speculative=True)
                case Move(job=job, machine=machine, source=source):
                    self._stop_copy(job, source, f"moved to {machine}: every slot is held")
                    self._start(job, machine, speculative=False)
                case Wait(until=until):
                    wake = until
        self._full.probe()
        return wake

    async def _step(self, poked: asyncio.Task[bool]) -> bool:
        """One turn of the loop; False when nothing is left to wait for."""
        wake = None if self._stopping else self._decide()
        for drv_path, machine in self._full.drop:
            self._stop_copy(drv_path, machine, "second copy: every slot is held")
        self._full.drop.clear()
        # A builder still answering, or full of other clients' builds, matters only while
        # there is work to give it: a run stopping (a failure without -k) has none.
        left = self._left() and not self._stopping
        if (
            not self._tasks
            and not self._homeward
            and not ((self._joining or self._reconnects.tasks) and left)
            and not (self._full.probes and left)
        ):
            # Nothing runs, so a wake-up could only be for a backed-off machine: rather
            # than sleep out its backoff, try those an earlier run backed off, or stop and say
            # why (_check_stuck).
            return bool(left) and self._retry_restored()
        timeout = None if wake is None else max(0.0, wake - self.clock())
        awaited: set[asyncio.Future[Any]] = {poked, *self._tasks, *self._homeward}
        awaited |= {*self._joining, *self._full.probes, *self._reconnects.tasks}
        done, _ = await asyncio.wait(awaited, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for probe in [task for task in self._full.probes if task in done]:
            machine, error = self._full.probed(probe)
            if error is not None:
                self._machine_failed(machine, error.message, self.clock())
        for joined in [task for task in self._joining if task in done]:
            self._joined(joined)
        for reconnect in [task for task in self._reconnects.tasks if task in done]:
            self._reconnected(*self._reconnects.ended(reconnect))
        for arrived in [task for task in self._homeward if task in done]:
            self._arrived(arrived)
        for task in [task for task in self._tasks if task in done]:
            self._settle(task)
        return True

    def _retry_restored(self) -> bool:
        """When nothing runs and work is left, the builders down only because an earlier run
        backed them off are tried again now, once per run: a fleet restarted or a network back
        since then would otherwise stop the run on an old reason (with ``-j 0``, or work only
        they can build). Their failures are kept: failing again backs them off longer. Whether
        any was."""
        now = self.clock()
        retried = [
            name
            for name, health in self._restored.items()
            if not self.policy.is_up(name, now) and self.policy.failures(name) <= health.failures
        ]
        self._restored = {}
        for name in retried:
            self.policy.retry_now(name, now)
            self._events.machine_up(
                name, "tried again before its backoff ends: no other machine can take the work left"
            )
        return bool(retried)

    def _left(self) -> int:
        """Derivations still to start (ready or waiting for their inputs)."""
        graph = self.policy.graph
        return graph.count(JobState.READY) + graph.count(JobState.PENDING)

    def _joined(self, task: asyncio.Task[None]) -> None:
        """A builder that was slow to answer has answered, or has failed for good."""
        name = self._joining.pop(task)
        error = None if task.cancelled() else task.exception()
        if error is None:
            self.policy.on_machine_up(name, self.clock())
            self._events.machine_up(name, "answered: it takes work from now on")
        elif isinstance(error, OffloadError):
            self._machine_failed(name, error.message, self.clock())
        else:
            raise error

    def _reconnected(self, name: str, answered: bool) -> None:
        """A builder fallen by a lost connection was reconnected (``reconnects``): if it
        answered, and is still down for that fall, it takes work again."""
        now = self.clock()
        if answered and not self.policy.is_up(name, now):
            self.policy.retry_now(name, now)
            self._events.machine_up(name, "reconnected after its connection was lost")

    def _tell_unreachable(self, start: float) -> None:
        """Each builder that did not answer at the start, down until its backoff ends."""
        for name, error in self._unreachable.items():
            until = self.wall() + (self.policy.down_until(name) - start)
            self._events.machine_down(name, error, until)

    def _check_stuck(self, *, opened: bool = True) -> None:
        """Stop the run when work is left that no machine can take: ``stranded`` once it has
        opened (what it built is kept, ``build.run``), not when it never began."""
        left = self._left()
        if left and not self._stopping:
            now = self.clock()
            down = [
                f"{name}: {self._last_error.get(name, 'backed off')}"
                for name in self.members
                if not self.policy.is_up(name, now)
            ]
            msg = f"{left} derivation(s) could not be built: no machine can take them"
            self.report.stranded = opened
            raise SchedulerError(
                msg + (f" ({'; '.join(down)})" if down else ""), hint=self._stranded_hint
            )

    def _start(self, drv_path: str, machine: str, *, speculative: bool) -> None:
        self._events.in_use_again(machine)
        task = asyncio.create_task(
            self._copies.build(drv_path, self.members[machine], speculative=speculative),
            name=f"{machine}:{drv_path}",
        )
        self._tasks[task] = (drv_path, machine)
        self._since[task] = self.wall()
        self.loads.started(machine)

    # -- how a copy ended --------------------------------------------------------------------

    @override
    def _settle(self, task: asyncio.Task[Outcome]) -> None:
        entry = self._tasks.pop(task, None)
        since = self._since.pop(task, self.wall())
        if entry is None:
            return  # a losing copy, cancelled while settling its twin in the same batch
        drv_path, machine = entry
        self.loads.ended(machine)
        self._holders.fed.discard(entry)
        now = self.clock()
        if task in self._told:  # said lost with its machine; how it ended decides nothing
            self._told.discard(task)
            self._stopped.pop(task, None)
            if not task.cancelled() and (error := task.exception()) is not None:
                # A copy turns every fault into its Outcome: anything else is a bug.
                logger.error("a copy said lost ended with %r", error, exc_info=error)
            return
        if task.cancelled():
            self._stopped_copy(task, drv_path, machine, since)
            return
        why = self._stopped.pop(task, None)  # stopped, but it ended first
        outcome = task.result()
        match outcome.kind:
            case "cancelled":
                return
            case "lost":
                self._lost(drv_path, machine, outcome, now)
            case "returned":
                self._returned(drv_path, machine, outcome, now)
            case "built":
                self._built(drv_path, machine, outcome, now, stopped=why)
            case "failed":
                if not self._fail(drv_path, machine, outcome, now):
                    self._superseded(drv_path, machine, outcome, why)
