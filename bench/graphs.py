"""Reproducible build graphs for the benchmarks, in the DAG file format of design.md.

``generate(shape, n, seed)`` always returns the same graph for the same arguments (it draws from
its own ``random.Random(seed)``). Work is in seconds at speed 1. At ``scale=1`` a graph of about
100 nodes has a total work of roughly 60-200 s and, except for the deliberately flat "wide" shape,
a critical path of roughly 10-40 s, so a benchmark on the local fleet (capacity ~16) finishes in
seconds to tens of seconds per graph; ``scale`` multiplies every node's work.

Shapes:

- ``layered``: about sqrt(n) layers of random sizes; each node depends on one node of the layer
  just before it and on up to two more from any earlier layer.
- ``chain``: three quarters of the nodes form one long chain of short builds; the rest are heavier
  side nodes that hang off a chain node, about half of them feeding a later chain node.
- ``wide``: wide and flat, at most three nodes deep: a couple of roots, a wide middle layer that
  depends on them, and a couple of sinks that each gather some of the middle.
- ``huge``: like ``layered`` with small nodes, plus a few huge nodes (about sqrt(n)/3 of them,
  each 15-30x a small node's work) spread over the layers (the "skewed" shape).
- ``bootstrap``: a stdenv bootstrap: a long serial spine (a sixth of the nodes), a few of its
  stages long compilers that need ``big-parallel``; small diamonds between consecutive stages
  (helpers built by one stage and used by the next); then packages on the last stage.

Node names are ``<shape><n>-s<seed>[-x<scale>]-nNNNN``: history keys on the derivation name, so
the same graph learns from its earlier runs, and different graphs do not pollute each other.

Command line: ``python bench/graphs.py SHAPE N SEED [--scale X] [--prefix P] > dag.json``.
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import sys
from collections.abc import Callable, Sequence

from offload.dagfile import Dag, DagNode, dump_dag
from offload.errors import ConfigError

__all__ = ["SHAPES", "generate", "main"]

# Work, indexes of deps (always earlier nodes) and required features.
_Node = tuple[float, tuple[int, ...]] | tuple[float, tuple[int, ...], frozenset[str]]


def _work(rng: random.Random, low: float, high: float) -> float:
    return rng.uniform(low, high)


def _layer_sizes(rng: random.Random, n: int, layers: int) -> list[int]:
    """Split n nodes into ``layers`` non-empty layers of random sizes."""
    layers = max(1, min(layers, n))
    cuts = sorted(rng.sample(range(1, n), layers - 1)) if layers > 1 else []
    bounds = [0, *cuts, n]
    return [b - a for a, b in itertools.pairwise(bounds)]


def _layered_structure(
    rng: random.Random, n: int, work: Callable[[], float], extra_deps: int = 2
) -> tuple[list[_Node], list[list[int]]]:
    nodes: list[_Node] = []
    layers: list[list[int]] = []
    for size in _layer_sizes(rng, n, round(math.sqrt(n))):
        layer: list[int] = []
        for _ in range(size):
            deps: set[int] = set()
            if layers:
                deps.add(rng.choice(layers[-1]))
                for _ in range(rng.randint(0, extra_deps)):
                    # Prefer recent layers: pick among the last three.
                    source = layers[-rng.randint(1, min(3, len(layers)))]
                    deps.add(rng.choice(source))
            layer.append(len(nodes))
            nodes.append((work(), tuple(sorted(deps))))
        layers.append(layer)
    return nodes, layers


def _layered(rng: random.Random, n: int) -> list[_Node]:
    nodes, _ = _layered_structure(rng, n, lambda: _work(rng, 0.4, 2.0))
    return nodes


def _chain(rng: random.Random, n: int) -> list[_Node]:
    chain_len = max(1, round(n * 0.75))
    sides = n - chain_len
    # Which chain node each side node hangs off, and which later chain node (if any) it feeds.
    hang: dict[int, list[int]] = {}
    for side in range(sides):
        hang.setdefault(rng.randrange(chain_len), []).append(side)
    nodes: list[_Node] = []
    chain_index: list[int] = []
    feeds: dict[int, list[int]] = {}  # chain position -> node indexes it must also depend on
    for pos in range(chain_len):
        deps = [chain_index[-1]] if chain_index else []
        deps.extend(feeds.pop(pos, []))
        chain_index.append(len(nodes))
        nodes.append((_work(rng, 0.2, 0.5), tuple(sorted(deps))))
        for _ in hang.get(pos, []):
            side_index = len(nodes)
            nodes.append((_work(rng, 1.0, 3.0), (chain_index[-1],)))
            if rng.random() < 0.5 and pos + 1 < chain_len:
                target = min(chain_len - 1, pos + rng.randint(3, 10))
                feeds.setdefault(target, []).append(side_index)
    return nodes


def _wide(rng: random.Random, n: int) -> list[_Node]:
    roots = min(n, 2)
    sinks = min(max(0, n - roots), 2)
    middle = n - roots - sinks
    nodes: list[_Node] = [(_work(rng, 0.5, 1.5), ()) for _ in range(roots)]
    nodes.extend((_work(rng, 0.5, 2.0), (rng.randrange(roots),)) for _ in range(middle))
    middle_indexes = range(roots, roots + middle)
    for _ in range(sinks):
        pool = middle_indexes if middle else range(roots)
        picked = rng.sample(pool, min(len(pool), 10))
        nodes.append((_work(rng, 0.5, 1.5), tuple(sorted(picked))))
    return nodes


def _huge(rng: random.Random, n: int) -> list[_Node]:
    nodes, layers = _layered_structure(rng, n, lambda: _work(rng, 0.2, 0.6))
    count = min(n, max(2, round(math.sqrt(n) / 3)))
    # Huge nodes sit in the first half of the layers, so their dependents still follow them.
    early = [i for layer in layers[: max(1, (len(layers) + 1) // 2)] for i in layer]
    for index in rng.sample(early if len(early) >= count else range(n), count):
        nodes[index] = (_work(rng, 6.0, 12.0), nodes[index][1])
    return nodes


def _bootstrap(rng: random.Random, n: int) -> list[_Node]:
    spine_len = max(1, n // 6)
    helpers = (n - spine_len) * 2 // 5
    compilers = set(rng.sample(range(spine_len), min(spine_len, 3)))
    # Which gap between stages each helper sits in (built by stage i, used by stage i + 1).
    gaps = sorted(rng.randrange(spine_len) for _ in range(helpers))
    nodes: list[_Node] = []
    previous: int | None = None
    waiting: list[int] = []
    for stage in range(spine_len):
        deps = ((previous,) if previous is not None else ()) + tuple(waiting)
        if stage in compilers:
            nodes.append((_work(rng, 3.0, 6.0), tuple(sorted(deps)), frozenset({"big-parallel"})))
        else:
            nodes.append((_work(rng, 0.2, 0.8), tuple(sorted(deps))))
        previous = len(nodes) - 1
        waiting = []
        for _ in range(gaps.count(stage)):
            waiting.append(len(nodes))
            nodes.append((_work(rng, 0.2, 1.0), (previous,)))
    assert previous is not None
    packages: list[int] = []
    while len(nodes) < n:
        deps_set = {previous}
        if packages and rng.random() < 0.5:
            deps_set.add(rng.choice(packages))
        packages.append(len(nodes))
        nodes.append((_work(rng, 0.4, 2.0), tuple(sorted(deps_set))))
    return nodes


SHAPES: dict[str, Callable[[random.Random, int], list[_Node]]] = {
    "layered": _layered,
    "chain": _chain,
    "wide": _wide,
    "huge": _huge,
    "bootstrap": _bootstrap,
}


def generate(
    shape: str, n: int, seed: int, *, scale: float = 1.0, prefix: str | None = None
) -> Dag:
    """A ``shape`` graph of ``n`` nodes, the same for the same arguments."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    if n < 1:
        raise ValueError(f"a graph needs at least one node, not {n}")
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive number, not {scale}")
    if prefix is None:
        # No "." in names: with --scale 0.5, nix-build built nothing for such a graph and
        # still exited 0.
        prefix = f"{shape}{n}-s{seed}" + (f"-x{scale:g}".replace(".", "p") if scale != 1 else "")
    raw = SHAPES[shape](random.Random(seed), n)
    names = [f"{prefix}-n{i:04d}" for i in range(len(raw))]
    # Milliseconds keep the JSON readable; nothing measures finer than that.
    return Dag(
        tuple(
            DagNode(
                names[i],
                round(node[0] * scale, 3),
                tuple(names[d] for d in node[1]),
                node[2] if len(node) > 2 else frozenset(),
            )
            for i, node in enumerate(raw)
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print a reproducible benchmark DAG as JSON.")
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("n", type=int, help="number of nodes")
    parser.add_argument("seed", type=int)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every node's work")
    parser.add_argument("--prefix", help="node name prefix (default: from shape, n, seed, scale)")
    args = parser.parse_args(argv)
    try:
        dag = generate(args.shape, args.n, args.seed, scale=args.scale, prefix=args.prefix)
    except (ValueError, ConfigError) as exc:
        parser.error(str(exc))
    sys.stdout.write(dump_dag(dag))
    return 0


if __name__ == "__main__":
    sys.exit(main())
