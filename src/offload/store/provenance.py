"""Which store paths the run's derivations make: the test a path from a builder must pass
before it may come into this host's store.

The model: a path is *made by* a set of derivations when it is an output of one of them or
an input source of one. An honest build's output refers only to paths of its inputs' closure
(Nix finds references by scanning for their hashes among the inputs), and those are exactly
the paths the derivation's closure makes. Any other path a builder names is one of its own
choosing, unless this host holds it (the closure of an input valid here, whose derivation a
run never reads: glibc, on its way from one builder to another). Brought home, it would be
valid in this host's store, unsigned, as though it had been built or fetched here, and any
later build here would use it: a "bash" of the builder's.
Nix's own hook brings a build's outputs alone, and fails a build whose outputs refer to
anything else not valid here.

``Provenance`` knows at once the paths of the derivations a run has read. A derivation it has
not read (one a builder already held, whose inputs were never looked at) has its closure's
files read only when a path is not explained otherwise, each file once, and only until every
path asked about is explained. Anything a builder built or holds may also be made by any
other derivation the run has read: the check keeps the builder's word within the run's own
paths, not within one derivation's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from offload.errors import StoreError
from offload.store.drv import Derivation

__all__ = ["NOT_MADE", "Provenance", "RefusedPaths", "refused_paths"]

# Why a path is refused, where the run's derivations are the test (``refused_paths``).
NOT_MADE = "which is made by no derivation of this run"


class RefusedPaths(StoreError):
    """A builder named paths that may not come here (``refused_paths``): its fault."""


class Provenance:
    """The paths made by ``drvs`` (drv path -> derivation), and by the closures of the
    derivations ``read`` reads (None: none is read). One caller at a time: a run's copies
    each have their own, or take turns (``asyncio.to_thread`` from one task)."""

    def __init__(
        self,
        drvs: Mapping[str, Derivation],
        read: Callable[[str], Derivation] | None = None,
    ) -> None:
        self._read = read
        self._made: set[str] = set()
        self._walked: set[str] = set()
        self._pending: list[str] = []  # derivations met but not yet read (``_walk``)
        self._known = dict(drvs)
        for drv in drvs.values():
            self._add(drv)

    def _add(self, drv: Derivation) -> list[str]:
        made = [output.path for output in drv.outputs.values() if output.path]
        made += drv.input_srcs
        self._made.update(made)
        return made

    def unexplained(self, paths: Iterable[str], roots: Iterable[str] = ()) -> list[str]:
        """Those of ``paths`` (sorted) that no derivation here makes, nor one of the closures of
        the derivations ``roots``."""
        left = {path for path in paths if path not in self._made}
        if left and self._read is not None:
            self._walk(roots, self._read, left)
        return sorted(left)

    def _walk(
        self, roots: Iterable[str], read: Callable[[str], Derivation], left: set[str]
    ) -> None:
        """Read the closures of ``roots`` until ``left`` (emptied as they are found) is
        explained; the rest (also after a file that could not be read) is read when a later
        call needs it."""
        stack = self._pending + [root for root in roots if root not in self._walked]
        try:
            while stack and left:
                drv_path = stack.pop()
                if drv_path in self._walked:
                    continue
                drv = self._known.get(drv_path)
                if drv is None:
                    try:
                        drv = read(drv_path)
                    except BaseException:
                        stack.append(drv_path)  # read again by a later call
                        raise
                    self._known[drv_path] = drv
                    left.difference_update(self._add(drv))
                self._walked.add(drv_path)
                stack.extend(dep for dep in drv.input_drvs if dep not in self._walked)
        finally:
            self._pending = stack


def refused_paths(
    machine: str, what: str, strays: Sequence[str], which: str, *, to: str = "brought home"
) -> RefusedPaths:
    """The error for ``strays`` (at least one), named by ``machine`` as what ``what`` (the
    outputs of ...) refer to, ``which`` saying why each may not be copied (``to``: where)."""
    more = f" and {len(strays) - 1} more" if len(strays) > 1 else ""
    return RefusedPaths(
        f"builder '{machine}' says {what} refer to '{strays[0]}'{more}, {which} and is not"
        f" valid here: nothing was {to}",
        hint=f"its store holds outputs built otherwise than here; delete them there"
        f" (nix-store --delete on {machine}) and build again",
    )
