"""The bench's walk of a run's critical path (``bench/critical_path.py``) over --json events."""

from __future__ import annotations

from typing import Any

import pytest
from bench.critical_path import critical_links

from offload.dagfile import Dag, DagNode


def _build(node: str, machine: str, times: tuple[float, float, float, float]) -> list[Any]:
    """A build's events: its first mark, building, fetching (its output made) and its end."""
    first, building, built, end = times
    drv = f"/nix/store/{'a' * 32}-{node}-salt.drv"
    return [
        {"event": "job_phase", "drv_path": drv, "machine": machine, "phase": "copying",
         "time": first},
        {"event": "job_phase", "drv_path": drv, "machine": machine, "phase": "building",
         "time": building},
        {"event": "job_phase", "drv_path": drv, "machine": machine, "phase": "fetching",
         "time": built},
        {"event": "job_finished", "drv_path": drv, "machine": machine, "status": "built",
         "finished": end},
    ]  # fmt: skip


def test_the_walk_follows_the_latest_ending_dependency_back_from_the_last_build() -> None:
    dag = Dag(
        (
            DagNode("g-n0", 1.0),
            DagNode("g-n1", 0.5),
            DagNode("g-n2", 2.0, ("g-n0", "g-n1")),
            DagNode("g-n10", 0.1),  # a name that starts with another's: matched whole
        )
    )
    events: list[dict[str, Any]] = [
        *_build("g-n0", "fast", (0.0, 0.0, 0.26, 0.27)),
        *_build("g-n1", "slow", (0.0, 0.01, 0.52, 0.55)),
        *_build("g-n10", "slow", (0.0, 0.0, 0.1, 0.1)),
        *_build("g-n2", "fast", (0.6, 0.63, 1.15, 1.16)),
    ]
    links = critical_links(events, dag, {"fast": 4.0, "slow": 1.0})
    # n2 waited on n1 (ended later than n0): n1 first, then n2.
    assert [link.node for link in links] == ["g-n1", "g-n2"]
    first, second = links
    assert (first.node, first.machine, first.gap) == ("g-n1", "slow", 0.0)
    assert (first.setup, first.over, first.fetching) == pytest.approx((0.01, 0.01, 0.03))
    # From n1's output made (0.52) to n2's first mark (0.6); set-up 0.03; 0.52 s of building
    # for 0.5 s of work at speed 4.
    assert second.gap == pytest.approx(0.08)
    assert second.setup == pytest.approx(0.03)
    assert second.over == pytest.approx(0.52 - 0.5)
    assert second.fetching == pytest.approx(0.01)


def test_no_built_job_is_no_path() -> None:
    assert critical_links([], Dag((DagNode("g-n0", 1.0),)), {}) == []
