"""The derivation graph of one run: what is missing locally, and what need not be built.

The graph is read from the local .drv files, breadth-first from the requested outputs, with one
validity query per level. A derivation whose needed outputs a builder already holds is to be
fetched from there; with substitution on, the local store's binary caches are asked for what is
still missing (top-down, as Nix's queryMissing goes). What only those needed is not looked at.

The local store fetches what its caches have before it answers, which for a large closure
takes minutes; its serve session prints nothing of it (nix-build shows each path it copies).
So a query still unanswered after ``SLOW_CACHES`` seconds is told (``slow_caches``), and the
run says it: the wait is explained, not silent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from offload.errors import ConfigError, OffloadError, StoreError
from offload.protocol.serve import StoreClient
from offload.store.drv import Derivation, read_derivation
from offload.store.path import StorePath

__all__ = [
    "SLOW_CACHES",
    "DrvGraph",
    "Roots",
    "Substituted",
    "all_valid",
    "check_impossible",
    "load_graph",
]

# Seconds a substituting query may take before the wait is said: a cache that has nothing
# answers in milliseconds from Nix's own narinfo cache, or in a round trip or two.
SLOW_CACHES = 3.0

# (drv path, output name) pairs, or a function that evaluates them (offload.nix.instantiate).
Roots = Sequence[tuple[str, str]] | Callable[[], Sequence[tuple[str, str]]]


@dataclass(frozen=True)
class Substituted:
    """Outputs of one derivation that the local store fetched from its binary caches."""

    outputs: tuple[str, ...]  # store paths
    started: float  # wall clock of the substituting query
    finished: float


@dataclass
class DrvGraph:
    """The derivations reachable from the requested ones whose needed outputs are missing."""

    drvs: dict[str, Derivation]
    wanted: dict[str, set[str]]  # drv path -> output names needed (by the user or a dependent)
    order: list[str]  # to build, dependencies first
    fetch: dict[str, str] = field(default_factory=dict)  # drv -> builder already holding it
    roots: list[tuple[str, str]] = field(default_factory=list)  # what was asked for, in order
    # drv -> what the local store substituted for it while the graph was read: not built.
    substituted: dict[str, Substituted] = field(default_factory=dict)

    def output_path(self, drv: str, output: str) -> str:
        path = self.drvs[drv].outputs[output].path
        if not path:
            raise ConfigError(
                f"{drv}: output '{output}' has no path known in advance",
                hint="content-addressed and impure derivations are not supported yet",
            )
        return path


async def load_graph(
    local: StoreClient,
    roots: Sequence[tuple[str, str]],
    read: Callable[[str], Derivation] = read_derivation,
    remotes: Mapping[str, StoreClient] | None = None,
    *,
    substitute: bool = False,
    always_substitute: bool = False,
    failed: dict[str, str] | None = None,
    slow_caches: Callable[[int], None] | None = None,
) -> DrvGraph:
    """``roots`` are (drv path, output name) pairs, as nix-instantiate names them.

    A derivation whose needed outputs are all valid on one of ``remotes`` is to be fetched from
    there, not built, and what only it needed is not looked at. With ``substitute``, the local
    store is then asked to substitute the outputs still missing (top-down, as Nix's queryMissing
    goes): a derivation whose outputs became valid is done, and its inputs are not looked at.
    Without it no such query is made; nor for a derivation that disallows it
    (``allowSubstitutes = false``), unless ``always_substitute`` (Nix's
    ``always-allow-substitutes``): it is built, as Nix builds it. A builder that fails to
    answer is asked no more, its error put in ``failed`` (the run leaves it out and says why).
    ``slow_caches`` is told how many paths the caches were asked for, each time a
    substituting query takes ``SLOW_CACHES`` seconds (module docstring).
    """
    graph = DrvGraph(drvs={}, wanted={}, order=[], roots=list(roots))
    for root, output in roots:
        if output not in _want(graph, root, read).outputs:
            raise ConfigError(f"{root} has no output '{output}'")
        graph.wanted[root].add(output)
    live_remotes = dict(remotes or {})
    failed = {} if failed is None else failed
    needs_build: set[str] = set()
    frontier = list(dict.fromkeys(root for root, _ in roots))
    slow = slow_caches or (lambda _count: None)
    # Breadth-first with one validity query per level, so a deep graph costs few round trips.
    while frontier:
        missing = await _missing(graph, frontier, local, live_remotes, needs_build, failed=failed)
        if substitute and missing:
            missing = await _substitute(graph, local, missing, always=always_substitute, slow=slow)
        frontier = _next_level(graph, missing, needs_build, read)
    graph.order = _topological(needs_build, graph.drvs)
    return graph


async def all_valid(
    local: StoreClient,
    roots: Sequence[tuple[str, str]],
    read: Callable[[str], Derivation] = read_derivation,
) -> bool:
    """Whether every requested output is valid here already: then the graph holds nothing to
    build or fetch, and no builder is needed (nix-build asks none either). False where a
    root cannot be read: ``load_graph`` says why."""
    try:
        paths = {read(drv).outputs[output].path for drv, output in roots}
    except (OffloadError, KeyError):
        return False
    if not all(paths):  # an output whose path is not known in advance
        return False
    return not paths - await local.query_valid_paths(paths)


def check_impossible(graph: DrvGraph) -> StoreError | None:
    """nix-build --check's refusal, or None: a requested derivation ``graph`` would build
    (its output is valid neither here, nor in a cache, nor on a builder) has nothing to check
    against, and Nix refuses it before building anything. Named as Nix names it: the first of
    them in the order its goals run, by the .drv's name."""
    order = set(graph.order)
    unbuilt = sorted({drv for drv, _ in graph.roots if drv in order}, key=_goal_key)
    if not unbuilt:
        return None
    more = f" (and {len(unbuilt) - 1} more)" if len(unbuilt) > 1 else ""
    return StoreError(
        f"some outputs of '{unbuilt[0]}' are not valid, so checking is not possible{more}",
        hint="build it first without --check (which builds again what was built, to compare)",
    )


def _goal_key(drv_path: str) -> tuple[str, str]:
    # Nix's DerivationGoal::key(): "b$" + the .drv's name + "$" + its path.
    return (StorePath(drv_path).name, drv_path)


def _want(graph: DrvGraph, drv_path: str, read: Callable[[str], Derivation]) -> Derivation:
    """``drv_path``'s derivation, read from its .drv file the first time it is named."""
    if drv_path not in graph.drvs:
        graph.drvs[drv_path] = read(drv_path)
        graph.wanted[drv_path] = set()
    return graph.drvs[drv_path]


async def _missing(
    graph: DrvGraph,
    frontier: list[str],
    local: StoreClient,
    remotes: dict[str, StoreClient],
    needs_build: set[str],
    *,
    failed: dict[str, str],
) -> dict[str, set[str]]:
    """The outputs ``frontier``'s derivations lack here and on every builder, by derivation;
    the ones a builder holds are put in ``graph.fetch`` instead."""
    drvs, wanted = graph.drvs, graph.wanted
    paths = {
        drvs[d].outputs[o].path for d in frontier for o in wanted[d] if drvs[d].outputs[o].path
    }
    valid = await local.query_valid_paths(paths)
    elsewhere = await _valid_on_remotes(remotes, paths - valid, failed)
    missing: dict[str, set[str]] = {}
    for drv_path in frontier:
        if drv_path in needs_build or drv_path in graph.fetch:
            continue
        drv = drvs[drv_path]
        lacking = {drv.outputs[o].path for o in wanted[drv_path]} - valid
        if not lacking:
            continue
        # A builder's copy before the caches: the builders already answered (no extra
        # query), and offload trusts their outputs as Nix trusts what build-remote copies
        # back; a cache costs a lookup per path, possibly over the internet, and Nix spends
        # seconds retrying one that is unreachable. Either beats building it again.
        holder = next((name for name, has in elsewhere.items() if lacking <= has), None)
        if holder is not None:
            graph.fetch[drv_path] = holder
        else:
            missing[drv_path] = lacking
    return missing


async def _substitute(
    graph: DrvGraph,
    local: StoreClient,
    missing: dict[str, set[str]],
    *,
    always: bool,
    slow: Callable[[int], None],
) -> dict[str, set[str]]:
    """``missing`` less what the local store substituted, recorded in ``graph.substituted``;
    a derivation that disallows substitutes is not asked for, unless ``always``. ``slow`` is
    told how many paths were asked for if the answer takes ``SLOW_CACHES`` seconds."""
    started = time.time()
    allowed = [
        lacking for drv, lacking in missing.items() if always or graph.drvs[drv].allow_substitutes
    ]
    if not allowed:
        return missing
    # The store substitutes what its caches have (and those paths' closures) before it
    # answers; a failure there is only a warning on its stderr (the run passes it on: an
    # unreachable cache costs seconds of retries, ``offload.build.run``).
    asked: set[str] = set().union(*allowed)
    timer = asyncio.get_running_loop().call_later(SLOW_CACHES, slow, len(asked))
    try:
        got = await local.query_valid_paths(asked, substitute=True)
    finally:
        timer.cancel()
    finished = time.time()
    for drv_path, lacking in missing.items():
        if lacking <= got:
            # Seen again when a later dependent wants more of its outputs: keep both.
            before = graph.substituted.get(drv_path)
            earlier = set(before.outputs) if before else set()
            graph.substituted[drv_path] = Substituted(
                tuple(sorted(lacking | earlier)),
                before.started if before else started,
                finished,
            )
    return {d: lacking for d, lacking in missing.items() if not lacking <= got}


def _next_level(
    graph: DrvGraph,
    missing: dict[str, set[str]],
    needs_build: set[str],
    read: Callable[[str], Derivation],
) -> list[str]:
    """Mark ``missing`` as to be built; their inputs, with the outputs they need, are next."""
    next_frontier: list[str] = []
    for drv_path in missing:
        needs_build.add(drv_path)
        for dep, outputs in graph.drvs[drv_path].input_drvs.items():
            _want(graph, dep, read)
            graph.wanted[dep].update(outputs)
            next_frontier.append(dep)
    return list(dict.fromkeys(next_frontier))


async def _valid_on_remotes(
    remotes: dict[str, StoreClient], paths: set[str], failed: dict[str, str]
) -> dict[str, set[str]]:
    """Which of ``paths`` each builder has; a builder that fails to answer is asked no more,
    its error kept in ``failed``."""
    if not paths or not remotes:
        return {}
    names = list(remotes)
    answers = await asyncio.gather(
        *(remotes[name].query_valid_paths(paths) for name in names), return_exceptions=True
    )
    result: dict[str, set[str]] = {}
    for name, answer in zip(names, answers, strict=True):
        if isinstance(answer, OffloadError):
            del remotes[name]
            failed[name] = answer.message
        elif isinstance(answer, BaseException):
            raise answer
        else:
            result[name] = answer
    return result


def _topological(selected: set[str], drvs: Mapping[str, Derivation]) -> list[str]:
    seen: set[str] = set()
    order: list[str] = []
    for root in sorted(selected):
        if root in seen:
            continue
        seen.add(root)
        stack = [(root, iter(sorted(drvs[root].input_drvs)))]
        while stack:
            current, deps = stack[-1]
            for dep in deps:
                if dep in selected and dep not in seen:
                    seen.add(dep)
                    stack.append((dep, iter(sorted(drvs[dep].input_drvs))))
                    break
            else:
                stack.pop()
                order.append(current)
    return order
