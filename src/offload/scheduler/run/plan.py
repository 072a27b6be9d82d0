"""What a run is given: the derivations to build, the machines to build them on, and the
guesses that stand in for history.

A ``BuildPlan`` lists the derivations dependencies first, with what each needs from the others;
``plan_jobs`` turns it into the policy's jobs. A job history does not know is guessed to take
``DEFAULT_WORK`` (``BIG_PARALLEL_WORK`` for big-parallel builds), scaled by the size of its
sources (``size_factor``). Each machine is a ``PoolMember``: its slots and speed for the policy
and a ``MemberLink`` to its store. ``InputMoves`` is the policy's cost of moving inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

from offload.protocol.serve import StoreClient
from offload.scheduler.dag import Job
from offload.scheduler.policy import MachineSlotSpec, can_build
from offload.scheduler.policy.costs import MissingInputs
from offload.scheduler.policy.guesses import (
    BIG_PARALLEL_WORK,
    DEFAULT_WORK,
    PREFER_LOCAL,
    TRIVIAL_WORK,
    guessed_work,
)
from offload.store.drv import Derivation
from offload.store.path import split_name_version

__all__ = [
    "BIG_PARALLEL_WORK",
    "DEFAULT_WORK",
    "MOVE_SECONDS",
    "PREFER_LOCAL",
    "TRIVIAL_WORK",
    "BuildPlan",
    "InputMoves",
    "MemberLink",
    "PoolMember",
    "guessed_drvs",
    "plan_jobs",
    "size_factor",
]

# Moving one input job's outputs to a machine: a few round trips on each side (measured on
# loopback at about 20-40 ms builder to builder; see docs/BENCHMARKS.md).
MOVE_SECONDS = 0.05


class MemberLink(Protocol):
    """A way to reach one machine's store: borrow a serve session (one to build on holds a
    slot on the machine itself where it can: ``Link.build_session``), or stop one mid-build."""

    def session(self) -> AbstractAsyncContextManager[StoreClient]: ...

    def build_session(
        self, *, on_wait: Callable[[], None] | None = None, fresh: bool = False
    ) -> AbstractAsyncContextManager[StoreClient]: ...

    async def cancel(self, client: StoreClient) -> None: ...


@dataclass(frozen=True)
class PoolMember:
    spec: MachineSlotSpec
    link: MemberLink
    remote: bool  # False: the local machine, whose store is the run's hub
    slot_key: str | None = None  # shared slot-lock name (offload.slots); None: not shared
    substitute: bool = False  # builders-use-substitutes: the builder tries its caches first
    # A second lane from the local store to it, for large uploads (``offload.protocol.lanes``):
    # (local session, session over a connection of its own). None: one connection is enough.
    lane: Callable[[], AbstractAsyncContextManager[tuple[StoreClient, StoreClient]]] | None = None


class InputMoves(MissingInputs):
    """The policy's transfer cost: ``MOVE_SECONDS`` per input job whose outputs the machine
    does not hold yet. Sizes are not known before outputs exist, and the outputs of most
    derivations move in a few round trips, so what this mostly decides is which of two equally
    fast machines takes a job: the one that already holds its inputs. The executor records
    where outputs are itself (``Holders``)."""

    def __init__(self, holders: Mapping[str, set[str]], seconds: float | None = None) -> None:
        super().__init__(holders, MOVE_SECONDS if seconds is None else seconds)


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


def guessed_drvs(plan: BuildPlan, estimates: Mapping[str, float] | None) -> set[str]:
    """The derivations whose work ``estimates`` (by name without version) do not give: guessed."""
    known = estimates or {}
    return {d for d in plan.order if split_name_version(plan.drvs[d].name)[0] not in known}


def plan_jobs(
    plan: BuildPlan,
    estimates: Mapping[str, float] | None = None,
    local: MachineSlotSpec | None = None,
) -> list[Job]:
    """Jobs for the policy; ``estimates`` maps a name without version to speed-1 seconds.

    A derivation with ``preferLocalBuild`` that the local machine (``local``, None: it has no
    slots) can build is built there, as Nix does (it never asks its hook for one, 2.4-2.33;
    2.34 only when it cannot build it here, and waits for a local slot): they are trivial
    builds (``writeText``, ``runCommandLocal``, ``buildEnv``, a NixOS system's top level) whose
    inputs are often large, so a builder would cost their copy both ways. It requires
    ``PREFER_LOCAL``, a feature only the local machine's spec offers
    (``build.members.local_spec``).
    """
    estimates = estimates or {}
    jobs = []
    in_plan = set(plan.order)
    for drv_path in plan.order:
        drv = plan.drvs[drv_path]
        pname = split_name_version(drv.name)[0]
        default = guessed_work(
            drv.required_features,
            size_factor(plan.source_bytes.get(drv_path, 0)),
            trivial=drv.prefer_local_build,
        )
        features = drv.required_features
        if (
            local is not None
            and drv.prefer_local_build
            and can_build(local, drv.platform, features)
        ):
            features |= {PREFER_LOCAL}
        jobs.append(
            Job(
                id=drv_path,
                work_estimate=estimates.get(pname, default),
                deps=tuple(d for d in drv.input_drvs if d in in_plan),
                system=drv.platform,
                required_features=features,
            )
        )
    return jobs
