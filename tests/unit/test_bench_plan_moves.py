"""bench.plan_moves: planning timed with input moves, as offload build plans."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from bench.plan_moves import SimulatedMoves, moves_cost
from bench.report_planning import planning_body, planning_targets
from bench.sections_plan import _plan

from offload.names import LOCAL
from offload.scheduler.dag import Job
from offload.scheduler.generated import layered_jobs, random_machines
from offload.scheduler.run.plan import MOVE_SECONDS
from offload.scheduler.simulate import simulate


def test_outputs_are_held_where_built_where_used_and_home_when_requested() -> None:
    a, b = Job("a", 1.0), Job("b", 1.0, ("a",))
    moves = SimulatedMoves([a, b])
    assert moves.estimate(b, "m1") == MOVE_SECONDS
    moves.record_output("a", "m1")
    assert moves.where == {"a": {"m1"}}  # needed by b: it stays on its builder
    assert moves.estimate(b, "m1") == 0
    assert moves.estimate(b, "m2") == MOVE_SECONDS
    moves.record_output("b", "m2")
    assert moves.where == {"a": {"m1", "m2"}, "b": {"m2", LOCAL}}


def test_a_simulation_with_input_moves_builds_everything_and_is_timed() -> None:
    jobs = layered_jobs(300, 2, feature_share=0.1)
    machines = random_machines(8, 2)
    result = simulate(jobs, machines, noise=0.3, seed=2, transfer=SimulatedMoves(jobs))
    assert result.as_dict()["built"] == len(jobs)
    assert moves_cost(300, 8, seed=2) > 0


def test_the_planning_table_shows_the_input_moves_column() -> None:
    section: dict[str, Any] = {
        "machines": 100,
        "runs": [
            {"nodes": 1000, "status": "ok", "seconds": 0.03, "peak_bytes": 680888},
            {
                "nodes": 50000,
                "status": "ok",
                "seconds": 1.95,
                "peak_bytes": 32092512,
                "input_moves_seconds": 2.71,
            },
        ],
    }
    text = "\n".join(planning_body({"planning": section}, {}))
    assert "| with input moves (s) |" in text
    assert "| 50,000 | 1.95 | 30.6 | 2.71 | - | ok |" in text
    assert "| 1,000 | 0.03 | 0.6 | - | - | ok |" in text
    older = copy.deepcopy(section)
    del older["runs"][1]["input_moves_seconds"]
    assert "| 50,000 | 1.95 | 30.6 | - | - | ok |" in "\n".join(
        planning_body({"planning": older}, {})
    )
    compiled = copy.deepcopy(section)
    compiled["runs"][1]["compiled_moves_seconds"] = 1.52
    text = "\n".join(planning_body({"planning": compiled}, {}))
    assert "| 50,000 | 1.95 | 30.6 | 2.71 | 1.52 | ok |" in text
    assert "Status: meets target." in text
    (row,) = planning_targets({"planning": compiled})
    assert "| 1.52 s, 31 MiB compiled (interpreted 2.71 s) | meets target |" in row


def test_a_failed_compiled_run_keeps_the_interpreted_figures(tmp_path: Path) -> None:
    # A build whose offload does not import: the compiled run fails, the rest was measured.
    broken = tmp_path / "site" / "offload"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('this build is broken')\n")
    section: dict[str, Any] = {"machines": 100, "runs": []}
    _plan(1000, broken.parent, section)
    (run,) = section["runs"]
    assert run["status"] == "ok"
    assert run["input_moves_seconds"] > 0
    assert run["seconds"] > 0
    assert run["compiled_moves_seconds"] is None
    assert run["compiled_error"] == "ImportError: this build is broken"
    text = "\n".join(planning_body({"planning": section}, {}))
    assert "| 1,000 |" in text
    assert "- 1,000 nodes compiled failed: ImportError: this build is broken" in text
