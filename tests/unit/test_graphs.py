from __future__ import annotations

import importlib.resources
import json
import re
import statistics

import pytest
from bench.graphs import SHAPES, generate, main

from offload.dagfile import Dag, dump_dag, parse_dag

SEEDS = range(5)


def depth(dag: Dag) -> int:
    """Nodes on the longest path, counting nodes rather than work."""
    level: dict[str, int] = {}
    for n in dag.nodes:
        level[n.name] = 1 + max((level[d] for d in n.deps), default=0)
    return max(level.values())


def nix_version_part(name: str) -> str:
    """Nix's parseDrvName: the version starts after the first '-' not followed by a letter."""
    match = re.search(r"-(?![A-Za-z])", name)
    return name[match.end() :] if match else ""


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_same_seed_same_graph_other_seed_other_graph(shape: str) -> None:
    first = dump_dag(generate(shape, 80, 11))
    assert dump_dag(generate(shape, 80, 11)) == first
    other = generate(shape, 80, 12)
    # Names carry the seed; the graphs must differ in substance too, not only in names.
    assert [n.work for n in other.nodes] != [
        n.work for n in parse_dag(json.loads(first), source="x").nodes
    ]


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("n", [1, 2, 3, 7, 40, 100, 200])
def test_node_counts_and_validity(shape: str, n: int) -> None:
    dag = generate(shape, n, 3)
    assert len(dag.nodes) == n
    # Round trip through the file format validates names, deps and order.
    assert parse_dag(json.loads(dump_dag(dag)), source="gen") == dag
    assert all(n.work >= 0 for n in dag.nodes)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_about_100_nodes_have_moderate_work(shape: str) -> None:
    for seed in SEEDS:
        dag = generate(shape, 100, seed)
        assert 60 <= dag.total_work() <= 200, (seed, dag.total_work())
        if shape != "wide":
            assert 10 <= dag.critical_path() <= 40, (seed, dag.critical_path())


def test_chain_is_long_relative_to_its_work() -> None:
    for seed in SEEDS:
        dag = generate("chain", 100, seed)
        assert dag.critical_path() / dag.total_work() > 0.3
        assert depth(dag) >= 75
        # A few side nodes: some nodes are off the main chain.
        assert depth(dag) < 100


def test_wide_is_flat() -> None:
    for seed in SEEDS:
        dag = generate("wide", 100, seed)
        assert depth(dag) <= 3
        assert dag.critical_path() / dag.total_work() < 0.1
        # Wide: most nodes could run at once after the roots.
        assert sum(1 for n in dag.nodes if len(n.deps) <= 1) >= 90


def test_layered_has_several_layers_and_shared_inputs() -> None:
    for seed in SEEDS:
        dag = generate("layered", 100, seed)
        assert 5 <= depth(dag) <= 20
        assert any(len(n.deps) >= 2 for n in dag.nodes)


def test_huge_has_a_few_nodes_far_above_the_median() -> None:
    for seed in SEEDS:
        dag = generate("huge", 100, seed)
        median = statistics.median(n.work for n in dag.nodes)
        huge = [n for n in dag.nodes if n.work >= 10 * median]
        assert 2 <= len(huge) <= 10
        # They carry a large share of the work though they are few.
        assert sum(n.work for n in huge) >= 0.2 * dag.total_work()


def test_scale_multiplies_work() -> None:
    base = generate("layered", 60, 5)
    double = generate("layered", 60, 5, scale=2)
    assert [n.deps != () for n in base.nodes] == [n.deps != () for n in double.nodes]
    for a, b in zip(base.nodes, double.nodes, strict=True):
        assert b.work == pytest.approx(2 * a.work, abs=0.002)
    assert double.critical_path() == pytest.approx(2 * base.critical_path(), rel=0.01)


def test_names_are_unique_across_graphs_and_have_no_nix_version() -> None:
    names = [
        n.name
        for shape in SHAPES
        for seed in (1, 2)
        for size in (40, 41)
        for n in generate(shape, size, seed).nodes
    ]
    names += [n.name for n in generate("layered", 40, 1, scale=0.5).nodes]
    assert len(set(names)) == len(names)
    # History keys on the name without version, so it must be the whole name.
    assert all(nix_version_part(name) == "" for name in names)
    assert nix_version_part("hello-2.12") == "2.12"


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown shape 'star'"):
        generate("star", 10, 1)
    with pytest.raises(ValueError, match="at least one node"):
        generate("chain", 0, 1)
    with pytest.raises(ValueError, match="scale must be a positive"):
        generate("chain", 10, 1, scale=0)


def test_cli_prints_the_generated_graph(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["huge", "50", "9", "--scale", "0.5"]) == 0
    out = capsys.readouterr().out
    assert parse_dag(json.loads(out), source="stdout") == generate("huge", 50, 9, scale=0.5)
    with pytest.raises(SystemExit):
        main(["chain", "0", "1"])
    assert "at least one node" in capsys.readouterr().err


def test_bundled_sample_is_the_documented_generator_output() -> None:
    text = (importlib.resources.files("offload") / "data" / "sample.json").read_text()
    sample = parse_dag(json.loads(text), source="sample.json")
    # Regenerate: python bench/graphs.py layered 30 0 --scale 2 --prefix sample
    assert sample == generate("layered", 30, 0, scale=2, prefix="sample")
    assert len(sample.nodes) == 30
    assert 60 <= sample.total_work() <= 90
    assert 10 <= sample.critical_path() <= 15
    # The demo fleet (speeds 4, 2, 1, two slots each, plus a local machine of speed 1 with two
    # slots) can in principle finish it in a few seconds; the demo's 15-30 s is overhead.
    assert sample.lower_bound([(4, 2), (2, 2), (1, 2), (1, 2)]) < 8
