"""The simulated Nix hook (offload.scheduler.nix_model) does what nix-protocols.md section 5 says
Nix 2.8 does: remote first, integer load/speed, local only on decline, serial accepts, the 5 s
postpone, and what cannot be built fails with its dependents."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from offload.cli import main
from offload.names import LOCAL
from offload.scheduler.dag import Job
from offload.scheduler.nix_model import NixCosts, simulate_nix
from offload.scheduler.policy import MachineSlotSpec
from offload.scheduler.simulate import RunRecord

SYSTEM = "x86_64-linux"
# No costs but the dispatcher's, so that times can be read off the work.
FREE = NixCosts(accept=0.0, decline=0.0, upload=0.0, fetch=0.0, local=0.0)


def _machine(name: str, speed: float, slots: int, *features: str) -> MachineSlotSpec:
    return MachineSlotSpec(name, speed, slots, frozenset({SYSTEM}), frozenset(features))


def _jobs(n: int, work: float = 1.0, *features: str) -> list[Job]:
    return [Job(f"j{i}", work, (), SYSTEM, frozenset(features)) for i in range(n)]


def _where(records: tuple[RunRecord, ...]) -> dict[str, str]:
    return {r.job: r.machine for r in records}


def test_remote_is_preferred_to_a_faster_idle_local_machine() -> None:
    result = simulate_nix(_jobs(1, 10.0), [_machine(LOCAL, 10, 2), _machine("slow", 1, 1)], FREE)
    assert _where(result.schedule) == {"j0": "slow"}
    assert result.makespan == pytest.approx(10.0)


def test_integer_division_keeps_a_loaded_fast_machine_first() -> None:
    machines = [_machine("fast", 4, 4), _machine("slow", 1, 4)]
    nix28 = simulate_nix(_jobs(4), machines, FREE)
    assert set(_where(nix28.schedule).values()) == {"fast"}  # 3/4 == 0 ties with 0/1
    nix220 = simulate_nix(_jobs(4), machines, replace(FREE, integer_speed=False))
    assert "slow" in _where(nix220.schedule).values()  # 1/4 > 0/1 with real division


def test_the_local_machine_builds_only_what_the_hook_declines() -> None:
    result = simulate_nix(_jobs(3), [_machine(LOCAL, 1, 2), _machine("b", 1, 1)], FREE)
    where = _where(result.schedule)
    assert list(where.values()).count("b") == 1
    assert list(where.values()).count(LOCAL) == 2


def test_accepts_are_asked_one_at_a_time() -> None:
    costs = NixCosts(accept=0.5, decline=0.0, upload=0.0, fetch=0.0)
    result = simulate_nix(_jobs(10, 0.0), [_machine("big", 1, 10)], costs)
    starts = sorted(r.start for r in result.schedule)
    assert starts == pytest.approx([0.5 * i for i in range(10)])
    assert result.makespan == pytest.approx(0.5 * 10)


def test_with_every_slot_taken_a_derivation_waits_for_the_poll() -> None:
    # One remote slot, no local builds (-j0): the second derivation is postponed at t=0 and
    # asked again at the 5 s poll although the slot frees at 1 s.
    result = simulate_nix(_jobs(2), [_machine("b", 1, 1)], FREE)
    assert sorted(r.start for r in result.schedule) == pytest.approx([0.0, 5.0])
    assert result.makespan == pytest.approx(6.0)


def test_with_local_slots_full_too_nix_postpones_rather_than_waits() -> None:
    # Nix says it is unwilling to build locally while its slots are full, so the hook
    # postpones; the third job starts at the poll, not when a slot frees at 1 s.
    result = simulate_nix(_jobs(3), [_machine(LOCAL, 1, 1), _machine("b", 1, 1)], FREE)
    assert sorted(r.start for r in result.schedule) == pytest.approx([0.0, 0.0, 5.0])


def test_uploads_to_one_machine_take_turns() -> None:
    costs = NixCosts(accept=0.0, decline=0.0, upload=1.0, fetch=0.0)
    result = simulate_nix(_jobs(3, 0.0), [_machine("b", 1, 3)], costs)
    assert sorted(r.end for r in result.schedule) == pytest.approx([1.0, 2.0, 3.0])


def test_what_no_machine_can_build_fails_with_its_dependents() -> None:
    jobs = [
        Job("gpu", 1.0, (), SYSTEM, frozenset({"cuda"})),
        Job("after", 1.0, ("gpu",), SYSTEM),
        Job("free", 1.0, (), SYSTEM),
    ]
    result = simulate_nix(jobs, [_machine("b", 1, 1)], FREE)
    assert result.failed == ("gpu",)
    assert result.skipped == ("after",)
    assert _where(result.schedule) == {"free": "b"}


def test_features_and_mandatory_features_are_matched_as_nix_does() -> None:
    machines = [
        MachineSlotSpec("mand", 1, 1, frozenset({SYSTEM}), frozenset({"big"}), frozenset({"kvm"})),
        _machine("plain", 1, 1, "big"),
    ]
    jobs = [
        Job("k", 1.0, (), SYSTEM, frozenset({"kvm"})),
        Job("b", 1.0, (), SYSTEM, frozenset({"big"})),
    ]
    assert _where(simulate_nix(jobs, machines, FREE).schedule) == {"k": "mand", "b": "plain"}


def test_noise_changes_actual_work_as_in_simulate() -> None:
    machines = [_machine("b", 1, 4)]
    exact = simulate_nix(_jobs(4, 10.0), machines, FREE)
    noisy = simulate_nix(_jobs(4, 10.0), machines, FREE, noise=0.5, seed=3)
    assert exact.makespan == pytest.approx(10.0)
    assert noisy.makespan != pytest.approx(10.0)
    again = simulate_nix(_jobs(4, 10.0), machines, FREE, noise=0.5, seed=3)
    assert again.makespan == noisy.makespan


def test_cli_policy_nix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dag = tmp_path / "dag.json"
    dag.write_text(json.dumps({"nodes": [{"name": f"n{i}", "work": 10} for i in range(4)]}))
    machines = ["--machines", "local:10:2,remote:1:2"]
    assert main(["simulate", str(dag), "--json", "--policy", "nix", *machines]) == 0
    nix = json.loads(capsys.readouterr().out)
    assert main(["simulate", str(dag), "--json", *machines]) == 0
    offload = json.loads(capsys.readouterr().out)
    built = {m["name"]: m["built"] for m in nix["machines"]}
    assert built["remote"] >= 2  # remote first, although local is ten times faster
    assert offload["makespan"] < nix["makespan"]
