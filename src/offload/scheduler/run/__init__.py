"""The executor: carries out the policy's decisions on real machines.

Where to look:

- ``plan``: what a run is given (``BuildPlan``, ``PoolMember`` and its ``MemberLink``) and the
  guesses that stand in for history (``plan_jobs``, ``size_factor``, ``InputMoves``);
- ``executor``: the ``Executor`` and its event loop; ``endings``: how a build copy's end is
  handled; ``stopping``: how copies are stopped, and said to be;
- ``copy``: one build copy on one machine, and store-to-store copying (``send_closure``);
- ``homeward``: outputs fetched home one fetch at a time per machine, in batches;
- ``disk``: a builder's full disk read from Nix's answer, and deleting its partial outputs;
- ``holders``: where each finished job's outputs live, and undoing jobs whose outputs were lost;
- ``learning``: better guesses from what this run has built;
- ``full``: builders whose every slot other clients hold; ``loads``: builders' load, reported at
  every session start there, setting their usable slots;
- ``events``: emitting the run's events and keeping its ``RunReport``.
"""

from offload.history.records import RunReport
from offload.scheduler.run.closure_copy import send_closure
from offload.scheduler.run.executor import MAX_LOSSES, Executor
from offload.scheduler.run.plan import (
    BIG_PARALLEL_WORK,
    DEFAULT_WORK,
    MOVE_SECONDS,
    BuildPlan,
    InputMoves,
    MemberLink,
    PoolMember,
    plan_jobs,
    size_factor,
)

__all__ = [
    "BIG_PARALLEL_WORK",
    "DEFAULT_WORK",
    "MAX_LOSSES",
    "MOVE_SECONDS",
    "BuildPlan",
    "Executor",
    "InputMoves",
    "MemberLink",
    "PoolMember",
    "RunReport",
    "plan_jobs",
    "send_closure",
    "size_factor",
]
