"""``bench.learn_steps``: the wide graph it times, and a step it times, both ways alike."""

from __future__ import annotations

from bench.learn_steps import _graph, step_seconds


def test_the_wide_graph_is_a_root_its_leaves_and_a_top() -> None:
    graph, leaves = _graph(5)
    assert len(leaves) == 5
    assert graph.critical_path("root") == 1.0 + 10.0 + 1.0
    graph.update_estimates({job.id: 2.0 for job in leaves})
    assert graph.critical_path("root") == 1.0 + 2.0 + 1.0


def test_a_step_is_timed_either_way() -> None:
    assert step_seconds(20, 1, at_once=True) > 0
    assert step_seconds(20, 1, at_once=False) > 0
