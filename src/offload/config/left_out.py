"""Which machine the command line left out would have built what no machine in the pool can.

A run refuses a derivation no machine of its pool can build (``Unschedulable``), naming what
it needs and why each machine in the pool cannot. Where the machine that could build it was
taken out by the command line (``-j 0`` or ``max-jobs = 0`` for the local machine, ``--on`` or
``--exclude`` for any), that is the fix, not "add a builder": said after the pool's reasons,
with the flag that left it out (a tester read "add a builder" with the one that could build it
named by ``--exclude``).
"""

from __future__ import annotations

from collections.abc import Collection

from offload.config.pool import Pool
from offload.errors import Unschedulable
from offload.names import LOCAL

__all__ = ["could_build", "with_left_out"]


# What left the local machine out (``Pool.local_out``), and what brings it back.
_LOCAL_FIX = {
    "-j 0": "pass -j N",
    "max-jobs = 0": "pass -j N",
    "--on": f"name `{LOCAL}` with --on",
    "--exclude local": f"drop --exclude {LOCAL}",
}


def could_build(pool: Pool, system: str, features: Collection[str]) -> tuple[str, str] | None:
    """What the command line or the settings left out of ``pool`` that builds ``system``
    with ``features``, and the fix; None when nothing left out could."""
    wanted = sorted(features)
    said: list[tuple[str, str]] = []
    local = pool.local_entry
    if pool.local is None and pool.local_out and local and local.supports(system, wanted):
        why = pool.local_out
        leave = "leaves" if len(why) == 1 else "leave"
        said.append((
            f"the local machine could, but {' and '.join(why)} {leave} it out",
            " and ".join(dict.fromkeys(_LOCAL_FIX[w] for w in why)),
        ))  # fmt: skip
    names = [m.name for m in pool.left_out if m.supports(system, wanted)]
    if names:
        them = "it" if len(names) == 1 else "them"
        named = ", ".join(repr(name) for name in names)
        said.append((
            f"{named} could, but --on/--exclude leaves {them} out",
            f"--on {names[0]}, or drop --on/--exclude",
        ))  # fmt: skip
    if not said:
        return None
    return "; ".join(what for what, _ in said), "; or ".join(fix for _, fix in said)


def with_left_out(error: Unschedulable, pool: Pool) -> Unschedulable:
    """``error`` with what the command line left out of ``pool`` that could build its job,
    and that fix; ``error`` itself when nothing left out could."""
    if error.needs is None or (said := could_build(pool, *error.needs)) is None:
        return error
    told = Unschedulable(f"{error.message}; {said[0]}", hint=said[1])
    told.needs = error.needs
    return told
