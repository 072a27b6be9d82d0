"""One ``offload build`` run: from .drv paths to valid local outputs, over the whole pool.

The run reads the derivation graph from the local .drv files (``graph``), finds what is missing
locally, takes what a builder already holds or the local store's binary caches have instead of
building it (when the local Nix would substitute: ``substitute`` on and ``substituters`` set;
``prebuilt``), turns the rest into a ``BuildPlan`` (``plan``), and hands it to the executor with
one member per machine of the pool (``members``; the local machine included, like any other).
The executor copies every built output back as it is built, through the local store's own serve
process, so at the end the requested outputs are valid here and nothing partial was ever
registered (``run``). ``sessions`` opens the stores' sessions all at once; ``dryrun`` plans a
run without building.
"""

from __future__ import annotations

from offload.build.dryrun import dry_run
from offload.build.graph import DrvGraph, Roots, Substituted, load_graph
from offload.build.members import pool_members
from offload.build.plan import build_plan
from offload.build.run import out_links, run_build

__all__ = [
    "DrvGraph",
    "Roots",
    "Substituted",
    "build_plan",
    "dry_run",
    "load_graph",
    "out_links",
    "pool_members",
    "run_build",
]
