"""bench.plan_fingerprint: the hash of many simulations' schedules, plain or with input moves."""

from __future__ import annotations

import pytest
from bench.plan_fingerprint import cases, main
from bench.plan_moves import SimulatedMoves


def test_with_moves_every_case_plans_with_input_moves() -> None:
    plain = list(cases(6))
    moving = list(cases(6, moves=True))
    assert all(isinstance(kw["transfer"], SimulatedMoves) for _, _, _, kw in moving)
    assert not any(isinstance(kw.get("transfer"), SimulatedMoves) for _, _, _, kw in plain)
    # The same graphs and machines: only the transfer model differs.
    assert [(k, jobs, machines) for k, jobs, machines, _ in plain] == [
        (k, jobs, machines) for k, jobs, machines, _ in moving
    ]


def test_the_last_line_hashes_the_cases_and_moves_change_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def last_line(argv: list[str]) -> str:
        assert main(argv) == 0
        return capsys.readouterr().out.splitlines()[-1]

    plain = last_line(["3"])
    assert plain.startswith("ALL ")
    assert last_line(["3"]) == plain
    assert last_line(["3", "--moves"]) != plain
