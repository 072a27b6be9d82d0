"""A job whose input was undone (its outputs lost) while it ran: no copy of it starts before
that input is built again, and if the input then fails, the job is skipped when it comes back,
never left pending for ever; so is a done one undone after that failure."""

from __future__ import annotations

from offload.scheduler.dag import Job, JobState
from offload.scheduler.policy import MachineSlotSpec, Move, Policy, Speculate, Start


def test_a_job_back_after_its_undone_input_failed_is_skipped_not_left_pending():
    policy = Policy(
        [Job("a", 1.0), Job("b", 10.0, ("a",)), Job("c", 1.0, ("b",))],
        [MachineSlotSpec("m1", 1, 1), MachineSlotSpec("m2", 1, 1)],
    )
    assert policy.next_decisions(0) == [Start("a", "m1", 1.0)]
    policy.on_finished("a", "m1", 1, True)
    assert [d.job for d in policy.next_decisions(1) if isinstance(d, Start)] == ["b"]
    policy.on_outputs_lost(["a"])  # b runs on m1; a is built again on m2, and fails there
    assert policy.next_decisions(2) == [Start("a", "m2", 3.0)]
    policy.on_finished("a", "m2", 3, False)
    assert policy.graph.state("b") is JobState.RUNNING  # its copy may hold its inputs already
    down = policy.on_machine_failed("m1", 4)
    assert down.returned == ("b",)
    # b was put back as pending for ever: the run never finished, and -k said "no machine
    # can take them".
    assert policy.graph.state("b") is JobState.SKIPPED
    assert policy.graph.state("c") is JobState.SKIPPED
    assert policy.graph.finished
    assert policy.take_skipped() == [("a", ("b", "c"))]
    assert policy.take_skipped() == []


def test_no_speculative_copy_starts_while_an_input_is_built_again():
    policy = Policy(
        [Job("a", 1.0), Job("b", 1000.0, ("a",))],
        [MachineSlotSpec("fast", 4, 2), MachineSlotSpec("slow", 1, 1)],
    )
    policy.next_decisions(0.0)
    policy.on_finished("a", "fast", 0.25, True)
    assert [d.machine for d in policy.next_decisions(0.25) if isinstance(d, Start)] == ["fast"]
    policy.on_machine_failed("fast", 0.5)  # b goes back, and starts on slow
    assert [d.machine for d in policy.next_decisions(0.5) if isinstance(d, Start)] == ["slow"]
    policy.on_outputs_lost(["a"])  # a's only outputs were on fast: it is built again
    later = policy.next_decisions(70.0)
    # A copy of b onto fast once it is back would have nothing to copy there: it was made,
    # and counted a loss of b when it found a's outputs nowhere.
    assert not [d for d in later if isinstance(d, Speculate)]
    assert [(d.job, d.machine) for d in later if isinstance(d, Start)] == [("a", "fast")]
    policy.on_finished("a", "fast", 70.25, True)
    assert [d.job for d in policy.next_decisions(70.25) if isinstance(d, Speculate)] == ["b"]


def test_no_overrun_copy_starts_while_an_input_is_built_again():
    # The same with guessed estimates: the copy would come from the overrun rule (a guessed
    # build far past its guess), which checked the inputs no more than speculation did.
    policy = Policy(
        [Job("a", 1.0), Job("b", 1.0, ("a",))],
        [MachineSlotSpec("fast", 4, 2), MachineSlotSpec("slow", 1, 1)],
        guessed=["a", "b"],
    )
    policy.next_decisions(0.0)
    policy.on_finished("a", "fast", 0.25, True)
    assert [d.machine for d in policy.next_decisions(0.25) if isinstance(d, Start)] == ["fast"]
    policy.on_machine_failed("fast", 0.5)
    assert [d.machine for d in policy.next_decisions(0.5) if isinstance(d, Start)] == ["slow"]
    policy.on_outputs_lost(["a"])
    later = policy.next_decisions(70.0)  # b has run 70x its guess on slow
    assert not [d for d in later if isinstance(d, Speculate)]
    assert [(d.job, d.machine) for d in later if isinstance(d, Start)] == [("a", "fast")]
    policy.on_finished("a", "fast", 70.25, True)
    assert [d.job for d in policy.next_decisions(70.25) if isinstance(d, Speculate)] == ["b"]


def test_a_job_waiting_on_a_full_builder_is_not_moved_while_an_input_is_built_again():
    policy = Policy(
        [Job("p", 2.0), Job("a", 10.0, ("p",))],
        [MachineSlotSpec("fast", 2.0, 1), MachineSlotSpec("twin", 2.0, 1)],
    )
    assert policy.next_decisions(0.0) == [Start("p", "fast", 1.0)]
    policy.on_finished("p", "fast", 1.0, True)
    assert policy.next_decisions(1.0) == [Start("a", "fast", 6.0)]
    policy.on_machine_full("a", "fast", 1.5)  # other clients hold fast's slots: a waits
    policy.on_outputs_lost(["p"])
    later = policy.next_decisions(2.0)
    # Moved to twin, a would find p's outputs nowhere: it waits for p, built again there.
    assert not [d for d in later if isinstance(d, Move)]
    assert [(d.job, d.machine) for d in later if isinstance(d, Start)] == [("p", "twin")]


def test_a_done_job_undone_after_its_input_failed_is_skipped_and_told():
    # b was built before a's outputs were lost and a failed when made again; then b's went
    # too: b waited for a for ever, and -k ended with "no machine can take them".
    policy = Policy(
        [Job("a", 1.0), Job("b", 1.0, ("a",)), Job("c", 1.0, ("b",))],
        [MachineSlotSpec("m", 1, 2)],
    )
    policy.next_decisions(0)
    policy.on_finished("a", "m", 1, True)
    policy.next_decisions(1)
    policy.on_finished("b", "m", 2, True)
    policy.next_decisions(2)  # c starts
    policy.on_outputs_lost(["a"])
    assert policy.next_decisions(3) == [Start("a", "m", 4.0)]
    policy.on_finished("a", "m", 4, False)
    policy.on_outputs_lost(["b"])
    assert policy.graph.state("b") is JobState.SKIPPED
    assert policy.take_skipped() == [("a", ("b",))]
    policy.on_finished("c", "m", 5, True)
    assert policy.graph.finished
