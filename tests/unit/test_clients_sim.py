"""The many-clients simulation: shared machines, with and without builder-side slots."""

import pytest

from offload.scheduler.clients import simulate_clients
from offload.scheduler.dag import Job
from offload.scheduler.policy import MachineSlotSpec

MACHINES = [MachineSlotSpec("a", 1.0, 2), MachineSlotSpec("b", 1.0, 2)]


def flat(client: str, count: int, work: float = 2.0) -> list[Job]:
    return [Job(f"{client}-{i}", work) for i in range(count)]


def test_counted_slots_never_exceed_a_machine_and_every_client_finishes():
    graphs = [flat("x", 8), flat("y", 8)]
    result = simulate_clients(graphs, MACHINES, counted=True)
    assert max(result.peak_running.values()) <= 2
    assert len(result.makespans) == 2
    # 16 jobs of 2 s on 4 slots: 8 s at best, and no slot is ever idle meanwhile.
    assert 7.9 < max(result.makespans) < 8.1
    assert result.utilisation > 0.99
    # First come, first served per slot: the client that asked first is done sooner.
    assert min(result.makespans) < 7


def test_without_counting_clients_overfill_the_machines_and_slow_each_other():
    graphs = [flat("x", 8), flat("y", 8)]
    shared = simulate_clients(graphs, MACHINES, counted=False)
    counted = simulate_clients(graphs, MACHINES, counted=True)
    assert max(shared.peak_running.values()) > 2
    # Oversubscribed machines share their speed: nobody finishes before everyone does.
    assert min(shared.makespans) > min(counted.makespans) + 1


def test_one_client_alone_gets_the_whole_pool():
    (alone,) = simulate_clients([flat("x", 8)], MACHINES, counted=True).makespans
    assert 3.9 < alone < 4.2


def test_a_client_moves_its_waiting_build_to_a_free_machine():
    graphs = [flat("x", 1, work=10.0), flat("y", 1, work=10.0)]
    machines = [MachineSlotSpec("a", 1.0, 1), MachineSlotSpec("b", 1.0, 1)]
    staying = simulate_clients(graphs, machines, counted=True)
    moving = simulate_clients(graphs, machines, counted=True, moving=True)
    # Both clients pick "a" first: one waits 10 s there, unless it moves to the idle "b".
    assert sorted(staying.makespans) == pytest.approx([10.0, 20.0], abs=0.1)
    assert sorted(moving.makespans) == pytest.approx([10.0, 10.0], abs=0.1)
    assert max(moving.peak_running.values()) <= 1


def test_kept_sessions_starve_a_second_client_unless_sessions_take_turns():
    graphs = [flat("ci", 20, work=1.0), flat("laptop", 2, work=1.0)]
    machines = [MachineSlotSpec("a", 1.0, 2)]
    fifo = simulate_clients(graphs, machines, counted=True)
    kept = simulate_clients(graphs, machines, counted=True, linger=1.0)
    turns = simulate_clients(graphs, machines, counted=True, linger=1.0, turn=5.0)
    # Every slot a build frees goes to the laptop's waiting builds first, first come first served.
    assert fifo.makespans[1] == pytest.approx(2.0, abs=0.2)
    # A kept session is the CI's next build's at once: the laptop waits for the CI's last.
    assert kept.makespans[1] > kept.makespans[0]
    # With turns the laptop gets the slots when the CI's sessions are 5 s old.
    assert 5.0 < turns.makespans[1] < 7.5
    # The CI pays for the laptop's two builds and the 1 s each of its sessions then keeps.
    assert kept.makespans[0] < turns.makespans[0] < kept.makespans[0] + 2.2
    for result in (fifo, kept, turns):
        assert result.peak_running == {"a": 2}
