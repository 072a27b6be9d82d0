"""How an executor's copies end: built (home in the background), failed, lost, given back.

A mixin of ``Executor``'s, as ``Stopping`` is (its tables and collaborators are the executor's
own): the loop settles a copy's task (``Executor._settle``) and hands its ``Outcome`` here,
which tells the policy, the run's report and its events. A failed build is final (its
dependents are skipped, and without keep-going the run halts); a copy lost with its machine
backs the machine off and goes back to the queue, and a derivation lost ``MAX_LOSSES`` times
fails (every build lost in one fall counts it, the one that noticed and the others there with
no copy elsewhere: nothing tells which brought the machine down); a copy whose inputs' holder
went away is given back, no fault of its own machine's.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Literal

from offload.errors import HookFailed, OffloadError
from offload.history.records import RunReport
from offload.names import LOCAL
from offload.scheduler.policy import Finished, Policy
from offload.scheduler.run.copy import BuildCopies
from offload.scheduler.run.holders import Holders
from offload.scheduler.run.learning import Learning
from offload.scheduler.run.outcome import Outcome, local_store_failed, with_error
from offload.scheduler.run.plan import PoolMember
from offload.scheduler.run.stopping import Stopping

__all__ = ["MAX_LOSSES", "Endings"]

MAX_LOSSES = 3
# Why a copy is stopped when another copy of its derivation failed.
_TWIN_FAILED = "stopped: another copy failed"


class Endings(Stopping):
    """What the executor does with each copy's end."""

    policy: Policy
    report: RunReport
    members: dict[str, PoolMember]
    keep_going: bool
    clock: Callable[[], float]
    _holders: Holders
    _learning: Learning
    _copies: BuildCopies
    _losses: dict[str, int]
    _lost_with: dict[str, str]  # the machine and error of each derivation's last loss
    _told: set[asyncio.Task[Outcome]]  # copies said lost with their machine, not settled yet
    _fell: set[str]  # machines this run backed off
    _built_on: set[str]  # machines that built for it
    _last_error: dict[str, str]
    _explain: Callable[[str, str], str]

    def _lost(self, drv_path: str, machine: str, outcome: Outcome, now: float) -> None:
        # Only a loss that leaves the derivation no copy counts: a second copy lost while its
        # twin builds on failed, at the last loss, a derivation whose first copy was healthy.
        last = self.policy.copies(drv_path) == [machine]
        if last:
            self._losses[drv_path] = self._losses.get(drv_path, 0) + 1
        # The last loss fails the derivation, and that copy is told as failed, once.
        failed = (
            last
            and self._losses[drv_path] >= MAX_LOSSES
            and self._fail(drv_path, machine, outcome, now)
        )
        if not failed:
            # Said before the machine's fall, which may skip this job too: its skip follows.
            self._emit_outcome(drv_path, machine, "lost", outcome)
        self._machine_failed(machine, outcome.error or "connection lost", now)
        if outcome.status is None and not outcome.nix_said:  # a connection lost, Nix silent
            self._reconnects.start(machine)

    def _returned(self, drv_path: str, machine: str, outcome: Outcome, now: float) -> None:
        if outcome.source is None:
            # Lost inputs are made again before anything needs them (Holders.undo_lost); if
            # that ever falls short, fail rather than retry forever. (An input being made
            # again, its fetch home failed as the copy waited for it, is no such shortfall:
            # the copy starts again only once it is built.)
            if self.policy.graph.inputs_done(drv_path):
                self._losses[drv_path] = self._losses.get(drv_path, 0) + 1
            if self._losses.get(drv_path, 0) >= MAX_LOSSES:
                if not self._fail(drv_path, machine, outcome, now):
                    self._superseded(drv_path, machine, outcome)
                return
        else:
            self._machine_failed(outcome.source, outcome.error or "connection lost", now)
            self._reconnects.start(outcome.source)
            why = f"the holder of its inputs, {outcome.source}, went away"
            outcome = dataclasses.replace(outcome, error=why)
        self.policy.on_returned(drv_path, machine)
        self._emit_outcome(drv_path, machine, "cancelled", outcome)
        self._skipped_later()

    def _skipped_later(self) -> None:
        """Say the jobs the policy skipped since it was last asked: a copy came back, or a
        job to be made again cannot be (``Policy.take_skipped``)."""
        for cause, skipped in self.policy.take_skipped():
            for drv_path in skipped:
                self._finish_skipped(drv_path, cause)

    def _built(
        self,
        drv_path: str,
        machine: str,
        outcome: Outcome,
        now: float,
        *,
        stopped: str | None = None,
    ) -> None:
        finished = self.policy.on_finished(drv_path, machine, now, ok=True)
        if not finished.accepted:
            self._superseded(drv_path, machine, outcome, stopped)
            return
        member = self.members[machine]
        self._built_on.add(machine)
        self._holders.built(drv_path, machine if member.remote else LOCAL, home=outcome.home)
        speed = member.spec.speed
        self._learning.learn(drv_path, speed, outcome.build_seconds, outcome.started, self.policy)
        if drv_path not in self.report.built:  # built again after its outputs were lost
            self.report.built.append(drv_path)
        if drv_path in self._holders.home and not outcome.home:
            self._send_home(drv_path, machine, outcome)
        else:
            self._emit_outcome(drv_path, machine, "built", outcome)
        for cancel in finished.cancel:
            self._cancel(cancel)

    def _send_home(
        self, drv_path: str, machine: str, outcome: Outcome, source: str | None = None
    ) -> None:
        """Copy a wanted output home in the background: its dependents need not wait for it
        (they get it from the builder, or from here once it has arrived). ``source``: the
        store to fetch it from, if not ``machine``, which built it."""
        source = source or machine
        task = asyncio.create_task(
            self._copies.fetch_home(drv_path, machine, source), name=f"home:{drv_path}"
        )
        self._homeward[task] = (drv_path, machine, source, outcome)

    def _arrived(self, task: asyncio.Task[int]) -> None:
        drv_path, machine, source, outcome = self._homeward.pop(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is None:  # its outputs are home (``fetch_home`` told the holders)
            arrived = dataclasses.replace(outcome, bytes_received=task.result(), home=True)
            self._emit_outcome(drv_path, machine, "built", arrived)
            return
        held = self._holders.where.get(drv_path, set()) - {source}
        if isinstance(error, OffloadError) and not local_store_failed(error) and held:
            # Sent elsewhere as an input meanwhile: not made again, nor left there (the run's
            # success means its outputs are here). From this host's store, where a local
            # dependent's copy brought them (nothing to fetch; the post-build-hook runs),
            # else from a builder they were sent to.
            self._machine_failed(source, error.message, self.clock())
            self._send_home(drv_path, machine, outcome, LOCAL if LOCAL in held else min(held))
            return
        if drv_path in self.report.built:  # not built for the run until its outputs are home
            self.report.built.remove(drv_path)
        if local_store_failed(error):
            # The local store refused the outputs: final, as for any other copy home.
            self.report.failed[drv_path] = error.message
            self._emit_outcome(drv_path, machine, "failed", with_error(outcome, error))
            # Nix's post-build-hook failing stops nix-build, -k or not.
            if not self.keep_going or isinstance(error, HookFailed):
                self._halt()
        elif isinstance(error, OffloadError):
            # The builder went away with outputs this machine still needs: built again.
            self._emit_outcome(drv_path, machine, "lost", with_error(outcome, error))
            self._machine_failed(source, error.message, self.clock())
        else:
            raise error

    def _machine_failed(self, machine: str, error: str, now: float) -> None:
        """Back ``machine`` off, stop its builds (the policy queued them again), and have
        outputs that only it held made again where they are still needed. Said once per
        backoff: the other builds lost in the same fall add nothing. Its copies that had
        already built or failed before the fall is said end as they ended: a build that
        failed there is final, not retried elsewhere as one lost with the machine."""
        for task in self._ended_copies(machine):
            self._settle(task)
        error = self._explain(machine, error)
        # Its builds that had no copy elsewhere are lost with it: each counts a loss, not only
        # the one whose session noticed first (``_lost``): that was often not the build that
        # brought the machine down, which went on being retried uncounted.
        # One still waiting for a slot or its session there never built: no loss of its.
        alone = [
            drv_path
            for task, (drv_path, where) in self._tasks.items()
            if where == machine and task not in self._stopped and task not in self._told
            and self._events.building(drv_path, machine)
            and self.policy.copies(drv_path) == [machine]
        ]  # fmt: skip
        down = self.policy.on_machine_failed(machine, now)
        self._fell.add(machine)
        self._full.gone(machine)
        if not down.merged:
            self._last_error[machine] = error
            self._events.machine_down(machine, error, self.wall() + (down.until - now))
        # Every copy there: the policy dropped them all, those with a twin elsewhere too (left
        # running, one built for hours on a machine said down, and the run waited for it).
        # Each is said lost now, with its machine: its task may settle after the derivation
        # was placed again, or skipped by this very fall.
        for other_task, (drv_path, where) in list(self._tasks.items()):
            if where == machine and other_task not in self._told:
                other_task.cancel()
                self._told.add(other_task)
                since = self._since.get(other_task, self.wall())
                # Said as another build's words: "during BuildDerivation of" that build read
                # as this one's.
                said = f"lost with {machine}, which fell under another build: {error}"
                self._events.finished(drv_path, machine, "lost", started=since, error=said)
        self._skipped_later()  # what its fall skips, once it is said
        for drv_path in alone:
            self._losses[drv_path] = self._losses.get(drv_path, 0) + 1
            self._lost_with[drv_path] = f"{machine}: {error}"
        coming = {drv for drv, _, _, _ in self._homeward.values()}
        again = self._holders.machine_gone(machine, self.policy, coming)
        # Built there, to be made again: not built for the run (counted twice, as built and
        # as left: "1 built, 12 left", then "13 derivation(s) could not be built").
        self.report.built[:] = [drv for drv in self.report.built if drv not in again]
        self._skipped_later()  # what was to be made again and cannot be (a dependency failed)

    def _lost_too_often(self, drv_path: str) -> bool:
        """Whether ``drv_path`` was lost with its machine ``MAX_LOSSES`` times: it is not
        started again (``_fail_lost``)."""
        return self._losses.get(drv_path, 0) >= MAX_LOSSES

    def _fail_lost(self, drv_path: str, machine: str, now: float) -> None:
        """The policy placed ``drv_path`` on ``machine`` again after its ``MAX_LOSSES``-th loss
        beside another build (``_machine_failed``): it fails there, never started, with the
        last machine's error, as the derivation whose own copy noticed it fails (``_lost``)."""
        finished = self.policy.on_finished(drv_path, machine, now, ok=False)
        error = (
            f"lost with its machine {self._losses[drv_path]} times, the last on "
            f"{self._lost_with.get(drv_path, 'its builder')}"
        )
        self.report.failed[drv_path] = error
        self._events.finished(drv_path, "", "failed", started=self.wall(), error=error)
        self._failure_ends(drv_path, finished)

    def _fail(self, drv_path: str, machine: str, outcome: Outcome, now: float) -> bool:
        """The derivation failed with this copy; False (and nothing done) when its end
        decides nothing any more (``_superseded``). Its other copies are stopped: a failed
        build is final, and theirs would be thrown away."""
        finished = self.policy.on_finished(drv_path, machine, now, ok=False)
        if not finished.accepted:
            return False
        self.report.failed[drv_path] = outcome.error or "failed"
        if outcome.status is not None:
            self.report.statuses[drv_path] = outcome.status
        self._emit_outcome(drv_path, machine, "failed", outcome)
        self._failure_ends(drv_path, finished)
        return True

    def _failure_ends(self, drv_path: str, finished: Finished) -> None:
        """What the failure of ``drv_path`` ends: its other copies, its dependents (skipped),
        and, without keep-going, the run."""
        for cancel in finished.cancel:
            self._cancel(cancel, _TWIN_FAILED)
        for skipped in finished.skipped:
            self._finish_skipped(skipped, drv_path)
        if not self.keep_going:
            self._halt()

    def _superseded(
        self,
        drv_path: str,
        machine: str,
        outcome: Outcome,
        stopped: str | None = None,
    ) -> None:
        """A copy that ended (built, or failed) after another had ended its derivation, or
        after its machine was let go: what it did decides nothing. ``stopped``: why it was
        being stopped, if it was (it ended before it could be)."""
        why = stopped or "another copy ended first"
        self._emit_outcome(drv_path, machine, "cancelled", dataclasses.replace(outcome, error=why))

    def _finish_skipped(self, drv_path: str, cause: str) -> None:
        if drv_path in self.report.built:  # built, its outputs lost since, and not made again
            self.report.built.remove(drv_path)
        self.report.skipped.append(drv_path)
        reason = f"dependency {cause} failed" if cause else "cannot be built"
        self._events.finished(drv_path, "", "skipped", started=self.wall(), error=reason)

    def _emit_outcome(
        self,
        drv_path: str,
        machine: str,
        status: Literal["built", "failed", "lost", "cancelled"],
        outcome: Outcome,
    ) -> None:
        self._events.finished(
            drv_path,
            machine,
            status,
            started=outcome.started,
            error=outcome.error,
            sent=outcome.bytes_sent,
            received=outcome.bytes_received,
            build_seconds=outcome.build_seconds,
        )
