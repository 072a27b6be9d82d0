"""Where outputs live, and undoing the jobs whose outputs were lost.

The executor knows which stores hold each finished job's outputs: the machine that built it,
every machine its outputs were sent to since, and the local store (the *home*). Outputs that
must end up here (the requested ones; all of them with ``home=None``, which is what
``--fetch-all`` and Nix do) are copied home in the background as soon as they are built; the
others stay where they were built. Until a wanted output is home it counts as needed: if its
builder goes away first, the job runs again. Inputs reach a machine from the local store, else
from a builder holding them. When a machine goes down, outputs only it held are lost: the jobs
that made them run again if anything still needs them (``Policy.on_outputs_lost``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from offload.names import LOCAL
from offload.scheduler.dag import JobState
from offload.scheduler.policy import Policy
from offload.scheduler.run.plan import BuildPlan

__all__ = ["Holders", "InputsGone"]


class InputsGone(Exception):
    """Inputs could not be had from their holder ``source`` (None: no holder is left)."""

    def __init__(self, source: str | None, message: str) -> None:
        super().__init__(message)
        self.source = source
        self.message = message


class Holders:
    """The stores holding each finished job's outputs, and which running copies have theirs."""

    def __init__(self, plan: BuildPlan, home: Iterable[str] | None) -> None:
        self.plan = plan
        # Which jobs' outputs come home as soon as they are built (None: every job's).
        self.home = set(plan.order) if home is None else set(home)
        self.producer = {path: drv for drv in plan.order for path in plan.outputs[drv]}
        # Finished job -> the stores holding its outputs (empty: lost, not needed so far).
        self.where: dict[str, set[str]] = {}
        # Running copies (job, machine) whose inputs are in place on their machine.
        self.fed: set[tuple[str, str]] = set()

    def built(self, drv_path: str, store: str, *, home: bool) -> None:
        self.where[drv_path] = {store}
        if home:
            self.where[drv_path].add(LOCAL)

    def arrived_home(self, drv_path: str) -> None:
        if drv_path in self.where:
            self.where[drv_path].add(LOCAL)

    def sources(self, drv_path: str, target: str) -> dict[str, list[str]]:
        """The inputs ``target`` may lack, grouped by the store to copy them from."""
        groups: dict[str, list[str]] = {}
        for path in self.plan.inputs[drv_path]:
            job = self.producer.get(path)
            holders = {LOCAL} if job is None else self.where.get(job)
            if not holders:
                raise InputsGone(None, f"the outputs of {job} were lost with their builder")
            if target in holders:
                continue
            # The local store is always there and a single hop from anywhere.
            source = LOCAL if LOCAL in holders else min(holders)
            groups.setdefault(source, []).append(path)
        return groups

    def sent(self, paths: Iterable[str], target: str) -> None:
        """``paths`` arrived whole in ``target``'s store."""
        for path in paths:
            job = self.producer.get(path)
            if job is not None and job in self.where:
                self.where[job].add(target)

    def machine_gone(
        self, machine: str, policy: Policy, coming: Collection[str] = frozenset()
    ) -> set[str]:
        """Outputs only ``machine`` held are lost: have them made again where still needed,
        but those ``coming`` home from it already (a fetch under way may well end: a builder
        whose disk filled up answers still), made again only if their fetch fails and no
        other store holds them (``Endings._arrived`` fetches them from there). Returns the
        jobs to be made again."""
        for holders in self.where.values():
            holders.discard(machine)
        return self.undo_lost(policy, coming)

    def undo_lost(self, policy: Policy, coming: Collection[str] = frozenset()) -> set[str]:
        """Jobs whose outputs are nowhere any more and are still needed run again, with any
        of their dependencies in the same state; returns them."""
        graph = policy.graph
        stack = [
            job
            for job, where in self.where.items()
            if not where and job not in coming and self.needed(job, policy)
        ]
        undo: set[str] = set()
        while stack:
            job = stack.pop()
            if job in undo:
                continue
            undo.add(job)
            stack.extend(dep for dep in graph.job(job).deps if not self.where.get(dep, {LOCAL}))
        for job in undo:
            del self.where[job]
        if undo:
            policy.on_outputs_lost(undo)
        return undo

    def needed(self, job: str, policy: Policy) -> bool:
        """Whether this machine or a dependent still has to receive this job's outputs."""
        if job in self.home and LOCAL not in self.where.get(job, ()):
            return True
        graph = policy.graph
        for dependent in graph.dependents(job):
            state = graph.state(dependent)
            if state in {JobState.PENDING, JobState.READY}:
                return True
            if state is JobState.RUNNING and any(
                (dependent, where) not in self.fed for where in policy.copies(dependent)
            ):
                return True
        return False
