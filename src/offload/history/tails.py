"""How much work follows a build, by name, from the dependency edges history has seen.

``offload build`` records each run's graph and ``offload-hook`` each build's input derivations
(``History.recent_deps``). Taken by derivation name without version (as estimates are), those
edges say what was built on top of what; a build's *tail* is the longest chain of estimated
work after it (the work of the builds that depend on it, and of theirs, and so on), 0 for a
name nothing was seen to depend on. ``offload-hook`` sees one derivation at a time; the tail is
its view of the critical path: work + tail orders the derivations waiting for a slot, so the
one with the most work still behind it goes first (as a run orders its ready jobs by critical
path). Names whose edges form a cycle (a bootstrap's stages share names) count each name once
on a chain, and a name met inside a cycle gets a tail without the rest of that cycle (short,
never endless).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping

from offload.errors import StoreError
from offload.store.path import StorePath, split_name_version

__all__ = ["name_of", "tails"]


@functools.lru_cache(maxsize=1 << 16)  # the edges name the same derivations many times
def name_of(drv_path: str) -> str | None:
    """The name history learns a derivation under (without version); None if not a store path."""
    try:
        return split_name_version(StorePath.parse(drv_path).derivation_name)[0]
    except (StoreError, ValueError):
        return None


def tails(edges: Iterable[tuple[str, str]], work: Callable[[str], float]) -> dict[str, float]:
    """Per name, the longest chain of ``work`` seen after it along ``edges`` ((derivation,
    input derivation) store paths)."""
    dependents: dict[str, set[str]] = {}
    for drv, dep in edges:
        above, below = name_of(drv), name_of(dep)
        if above is not None and below is not None and above != below:
            dependents.setdefault(below, set()).add(above)
    found: dict[str, float] = {}
    for name in dependents:
        _tail(name, dependents, work, found)
    return found


def _tail(
    start: str,
    dependents: Mapping[str, set[str]],
    work: Callable[[str], float],
    found: dict[str, float],
) -> float:
    """``start``'s tail, and every name's on the way (iterative: chains can be long)."""
    on_chain: set[str] = set()
    stack: list[tuple[str, bool]] = [(start, False)]
    while stack:
        name, expanded = stack.pop()
        if name in found:
            continue
        after = [d for d in dependents.get(name, ()) if d not in on_chain]
        if expanded:
            on_chain.discard(name)
            found[name] = max((work(d) + found.get(d, 0.0) for d in after), default=0.0)
            continue
        on_chain.add(name)
        stack.append((name, True))
        stack.extend((d, False) for d in after if d not in found)
    return found[start]
