"""Placement policy on a fake clock: every time is passed in, nothing sleeps."""

from __future__ import annotations

import pytest

from offload.errors import SchedulerError
from offload.scheduler.dag import Job
from offload.scheduler.policy import (
    Backoff,
    BandwidthTransferCost,
    Cancel,
    Decision,
    MachineSlotSpec,
    Policy,
    Speculate,
    Start,
    Wait,
    can_build,
    why_cannot_build,
)
from offload.scheduler.simulate import simulate

X86 = frozenset({"x86_64-linux"})


def machine(
    name: str,
    speed: float = 1.0,
    slots: int = 1,
    *,
    supported: frozenset[str] = frozenset(),
    mandatory: frozenset[str] = frozenset(),
    systems: frozenset[str] = X86,
) -> MachineSlotSpec:
    return MachineSlotSpec(name, speed, slots, systems, supported, mandatory)


def job(name: str, work: float, *deps: str, features: frozenset[str] = frozenset()) -> Job:
    return Job(name, work, tuple(deps), "x86_64-linux", features)


def starts(decisions: list[Decision]) -> list[tuple[str, str]]:
    return [(d.job, d.machine) for d in decisions if isinstance(d, Start)]


def waits(decisions: list[Decision]) -> list[float]:
    return [d.until for d in decisions if isinstance(d, Wait)]


# Ordering


def test_long_chain_head_goes_before_short_independent_jobs() -> None:
    jobs = [
        job("short1", 3),
        job("short2", 3),
        job("chain0", 1),
        job("chain1", 1, "chain0"),
        job("chain2", 1, "chain1"),
        job("chain3", 1, "chain2"),
    ]
    policy = Policy(jobs, [machine("only")])
    assert starts(policy.next_decisions(0.0)) == [("chain0", "only")]
    # The chain's next link (remaining path 3, more dependents) beats a short job of work 3.
    assert policy.on_finished("chain0", "only", 1.0, ok=True).newly_ready == ("chain1",)
    assert starts(policy.next_decisions(1.0)) == [("chain1", "only")]


def test_ties_go_to_more_dependents_then_id() -> None:
    jobs = [job("b", 2), job("a", 2), job("c", 2), job("c_user", 0, "c")]
    policy = Policy(jobs, [machine("m", slots=1)])
    # c has the longest remaining path (2 + 0) tied with a and b but one dependent more.
    assert starts(policy.next_decisions(0.0)) == [("c", "m")]
    policy.on_finished("c", "m", 2.0, ok=True)
    # c_user (path 0) is last; a before b by id.
    assert starts(policy.next_decisions(2.0)) == [("a", "m")]


# Placement


def test_fastest_free_machine_is_chosen() -> None:
    policy = Policy([job("x", 8)], [machine("slow", 1), machine("fast", 4), machine("mid", 2)])
    [decision] = policy.next_decisions(10.0)
    assert decision == Start("x", "fast", 12.0)


def test_waits_for_soon_free_fast_slot() -> None:
    # "first" occupies fast until t=1; "second" would end at 1 + 3.9/4 there, 3.9 on slow.
    policy = Policy([job("first", 4), job("second", 3.9)], [machine("fast", 4), machine("slow")])
    decisions = policy.next_decisions(0.0)
    assert starts(decisions) == [("first", "fast")]
    assert waits(decisions) == [1.0]
    assert policy.copies("second") == []
    # Nothing changes while the slot is busy; the held job is offered again when it frees.
    assert starts(policy.next_decisions(0.5)) == []
    policy.on_finished("first", "fast", 1.0, ok=True)
    assert starts(policy.next_decisions(1.0)) == [("second", "fast")]


def test_holds_more_jobs_than_there_are_free_slots() -> None:
    # fast (2 slots) is busy until t=1 and t=1.1; slow has the only free slot. Both short jobs
    # end sooner after a wait on fast (1.25, 1.325) than on slow now (2.0, 1.8): neither may
    # take slow just because only one slot is free to hold for.
    policy = Policy(
        [job("long1", 4), job("long2", 4.4), job("short1", 1.0), job("short2", 0.9)],
        [machine("fast", 4, slots=2), machine("slow", 0.5, slots=1)],
    )
    first = policy.next_decisions(0.0)
    assert starts(first) == [("long2", "fast"), ("long1", "fast")]
    assert starts(first) + starts(policy.next_decisions(0.0)) == starts(first)
    assert policy.copies("short1") == policy.copies("short2") == []
    assert waits(first) == [1.0]
    policy.on_finished("long1", "fast", 1.0, ok=True)
    assert starts(policy.next_decisions(1.0)) == [("short1", "fast")]


def test_takes_free_slow_slot_when_waiting_does_not_pay() -> None:
    # fast is busy until t=10: 10 + 8/4 = 12 there, 8 on slow now.
    policy = Policy([job("first", 40), job("second", 8)], [machine("fast", 4), machine("slow")])
    decisions = policy.next_decisions(0.0)
    assert starts(decisions) == [("first", "fast"), ("second", "slow")]
    assert waits(decisions) == []


def _chain_and_side(side_work: float) -> list[Job]:
    return [job("c0", 4), job("c1", 4, "c0"), job("c2", 4, "c1"), job("side", side_work)]


def test_job_with_slack_leaves_the_fast_slot_free() -> None:
    # The chain needs 12 / 4 = 3 s on fast; "side" has 3 - 0.25 s of slack there and may spend
    # half of it: 1 s on slow ends within it, so the second fast slot stays free.
    pool = [machine("fast", 4, slots=2), machine("slow", 1)]
    policy = Policy(_chain_and_side(1), pool)
    assert starts(policy.next_decisions(0.0)) == [("c0", "fast"), ("side", "slow")]
    greedy = Policy(_chain_and_side(1), pool, slack_share=0)
    assert starts(greedy.next_decisions(0.0)) == [("c0", "fast"), ("side", "fast")]
    # Without history "side" may be far longer than guessed: it keeps the earliest finish.
    unknown = Policy(_chain_and_side(1), pool, guessed={"side"})
    assert starts(unknown.next_decisions(0.0)) == [("c0", "fast"), ("side", "fast")]


def test_job_without_enough_slack_keeps_the_earliest_finish() -> None:
    # 3 s on slow would spend more than half of side's slack (12 / 4 - 3 / 4 after it): fast.
    policy = Policy(_chain_and_side(3), [machine("fast", 4, slots=2), machine("slow", 1)])
    assert starts(policy.next_decisions(0.0)) == [("c0", "fast"), ("side", "fast")]


def test_slack_counts_the_critical_path_still_running() -> None:
    # At t=0.4 only "side" is ready (path 1), but c0 has 12 - 0.4 * 4 = 10.4 work of its path
    # left: side's slack comes from that, so it goes to slow, not to the free fast slot.
    pool = [machine("fast", 4, slots=2), machine("slow", 1)]
    jobs = [
        job("c0", 4),
        job("c1", 4, "c0"),
        job("c2", 4, "c1"),
        job("t", 0.4),
        job("side", 1, "t"),
    ]
    policy = Policy(jobs, pool)
    assert starts(policy.next_decisions(0.0)) == [("c0", "fast"), ("t", "slow")]
    assert policy.on_finished("t", "slow", 0.4, ok=True).newly_ready == ("side",)
    assert starts(policy.next_decisions(0.4)) == [("side", "slow")]


def _fork_join(side_work: float) -> list[Job]:
    # a -> (b1, b2) -> c is the critical path: 20 work, 5 s on fast, no slack anywhere on it.
    return [
        job("a", 4),
        job("b1", 8, "a"),
        job("b2", 8, "a"),
        job("c", 8, "b1", "b2"),
        job("side", side_work),
    ]


def test_coming_critical_job_claims_the_slot_it_will_need() -> None:
    # b1 and b2 are ready at t=1 and need both fast slots; side (1.5 s on fast) would still
    # hold one of them then, so it must not take the free fast slot now.
    pool = [machine("fast", 4, slots=2), machine("slow", 1)]
    policy = Policy(_fork_join(6), pool)
    assert starts(policy.next_decisions(0.0)) == [("a", "fast")]
    assert policy.copies("side") == []
    result = simulate(_fork_join(6), pool)
    assert result.makespan == pytest.approx(5.0)  # the critical path on fast, never delayed
    assert result.placement()["side"].machine == "fast"


def test_a_short_job_still_fits_before_a_claim() -> None:
    # side takes 0.9 s on fast: it is done before b2 wants the slot at t=1 (and 3.6 s on
    # slow would spend more than half its slack).
    pool = [machine("fast", 4, slots=2), machine("slow", 1)]
    policy = Policy(_fork_join(3.6), pool)
    assert starts(policy.next_decisions(0.0)) == [("a", "fast"), ("side", "fast")]


def test_no_holding_when_disabled() -> None:
    policy = Policy(
        [job("first", 4), job("second", 3.9)], [machine("fast", 4), machine("slow")], hold=False
    )
    assert starts(policy.next_decisions(0.0)) == [("first", "fast"), ("second", "slow")]


def test_slots_are_respected() -> None:
    policy = Policy([job(f"j{i}", 1) for i in range(5)], [machine("a", slots=2), machine("b")])
    decisions = policy.next_decisions(0.0)
    placed = starts(decisions)
    assert len(placed) == 3
    assert sorted(m for _, m in placed) == ["a", "a", "b"]
    assert policy.ready_count == 2


def test_transfer_cost_prefers_machine_holding_inputs() -> None:
    # Two equal machines; the big input was built on "there", so the dependent goes there.
    cost = BandwidthTransferCost(
        output_bytes={"input": 400_000_000}, bandwidth={}, default_bandwidth=100e6, hub=None
    )
    policy = Policy(
        [job("input", 1), job("user", 1, "input")],
        [machine("here"), machine("there")],
        transfer=cost,
    )
    [first] = policy.next_decisions(0.0)
    assert first == Start("input", "here", 1.0)
    policy.on_finished("input", "here", 1.0, ok=True)
    assert cost.estimate(job("user", 1, "input"), "there") == pytest.approx(4.0)
    assert cost.estimate(job("user", 1, "input"), "here") == 0.0
    assert starts(policy.next_decisions(1.0)) == [("user", "here")]


# Matching, exactly per Nix


@pytest.mark.parametrize(
    ("system", "required", "systems", "supported", "mandatory", "expected"),
    [
        ("x86_64-linux", set(), {"x86_64-linux"}, set(), set(), True),
        ("aarch64-linux", set(), {"x86_64-linux"}, set(), set(), False),
        ("builtin", set(), {"aarch64-darwin"}, set(), set(), True),
        ("builtin", set(), set(), set(), set(), True),
        ("x86_64-linux", {"kvm"}, {"x86_64-linux"}, {"kvm"}, set(), True),
        ("x86_64-linux", {"kvm"}, {"x86_64-linux"}, set(), set(), False),
        # A mandatory feature also counts as supported.
        ("x86_64-linux", {"kvm"}, {"x86_64-linux"}, set(), {"kvm"}, True),
        # A mandatory feature must be required by the job.
        ("x86_64-linux", set(), {"x86_64-linux"}, {"kvm"}, {"kvm"}, False),
        ("x86_64-linux", {"kvm"}, {"x86_64-linux"}, {"big-parallel"}, {"kvm", "big"}, False),
        ("x86_64-linux", {"kvm", "big"}, {"x86_64-linux"}, set(), {"kvm", "big"}, True),
    ],
)
def test_nix_matching_rule(  # noqa: PLR0917 -- one parameter per column of the table
    system: str,
    required: set[str],
    systems: set[str],
    supported: set[str],
    mandatory: set[str],
    expected: bool,
) -> None:
    m = MachineSlotSpec("m", 1.0, 1, frozenset(systems), frozenset(supported), frozenset(mandatory))
    assert can_build(m, system, frozenset(required)) is expected
    assert (why_cannot_build(m, system, frozenset(required)) is None) is expected


def test_mandatory_feature_machine_only_gets_matching_jobs() -> None:
    kvm = frozenset({"kvm"})
    machines = [machine("kvmbox", 100, 4, supported=kvm, mandatory=kvm), machine("plain", 1, 1)]
    jobs = [job("vmtest", 5, features=kvm), *(job(f"p{i}", 5) for i in range(3))]
    policy = Policy(jobs, machines)
    now = 0.0
    placed: dict[str, str] = {}
    while not policy.graph.finished:
        for decision in policy.next_decisions(now):
            if isinstance(decision, Start):
                placed[decision.job] = decision.machine
        now += 5
        for name, where in list(placed.items()):
            if policy.copies(name):
                policy.on_finished(name, where, now, ok=True)
    assert placed == {"vmtest": "kvmbox", "p0": "plain", "p1": "plain", "p2": "plain"}


def test_unschedulable_job_is_an_error_naming_it() -> None:
    machines = [machine("a"), machine("b", supported=frozenset({"big-parallel"}))]
    jobs = [job("ok", 1), job("gpu", 1, features=frozenset({"cuda"})), job("after", 1, "gpu")]
    with pytest.raises(SchedulerError, match="no machine can build gpu") as info:
        Policy(jobs, machines)
    assert "cuda" in info.value.message
    assert info.value.hint


def test_unschedulable_job_with_keep_going_skips_only_its_dependents() -> None:
    machines = [machine("a")]
    jobs = [
        job("ok", 1),
        Job("arm", 1, (), "aarch64-linux"),
        job("after", 1, "arm"),
    ]
    policy = Policy(jobs, machines, strict=False)
    assert set(policy.unschedulable) == {"arm"}
    assert "aarch64-linux" in policy.unschedulable["arm"]
    assert policy.skipped_at_start == ["after"]
    assert starts(policy.next_decisions(0.0)) == [("ok", "a")]


def test_machine_without_slots_cannot_take_work() -> None:
    with pytest.raises(SchedulerError, match="no slots"):
        Policy([job("x", 1)], [machine("empty", slots=0)])


# Failures


def test_build_failure_skips_dependents_and_keeps_independent_work() -> None:
    jobs = [job("bad", 5), job("child", 1, "bad"), job("grandchild", 1, "child"), job("solo", 1)]
    policy = Policy(jobs, [machine("a", slots=2)])
    assert sorted(starts(policy.next_decisions(0.0))) == [("bad", "a"), ("solo", "a")]
    result = policy.on_finished("bad", "a", 5.0, ok=False)
    assert result.accepted
    assert result.skipped == ("child", "grandchild")
    assert result.newly_ready == ()
    policy.on_finished("solo", "a", 5.0, ok=True)
    assert policy.next_decisions(5.0) == []
    assert policy.graph.finished


def test_backoff_grows_and_is_capped() -> None:
    delays = [Backoff().delay(n) for n in range(1, 7)]
    assert delays[:4] == [60.0, 180.0, 540.0, 1620.0]
    assert delays[4:] == [1620.0, 1620.0]
    assert [Backoff(base=2.0).delay(n) for n in (1, 2)] == [2.0, 6.0]


def test_failures_an_earlier_run_counted_go_on_until_a_build_there() -> None:
    policy = Policy([job("j", 100), job("k", 100)], [machine("fast", 10)])
    policy.remember_failures("fast", 2)
    assert policy.is_up("fast", 0.0)  # its backoff ended: it takes work
    assert starts(policy.next_decisions(0.0)) == [("j", "fast")]
    down = policy.on_machine_failed("fast", 1.0)
    assert (down.failures, down.until) == (3, 1.0 + 540.0)
    policy.remember_failures("fast", 3)  # as if told again; a build there ends them
    assert starts(policy.next_decisions(541.0)) == [("j", "fast")]
    policy.on_finished("j", "fast", 550.0, ok=True)
    assert starts(policy.next_decisions(550.0)) == [("k", "fast")]
    down = policy.on_machine_failed("fast", 560.0)
    assert (down.failures, down.until) == (1, 560.0 + 60.0)


def test_failed_machine_is_backed_off_and_its_work_returns() -> None:
    policy = Policy([job("j", 100), job("k", 1000)], [machine("fast", 10), machine("slow", 1)])
    assert sorted(starts(policy.next_decisions(0.0))) == [("j", "slow"), ("k", "fast")]
    down = policy.on_machine_failed("fast", 10.0)
    assert down.returned == ("k",)
    assert down.until == 70.0
    assert down.failures == 1
    assert not policy.is_up("fast", 69.0)
    # k cannot go to fast while it is down: it waits for slow (busy until 100) or fast (up at 70).
    decisions = policy.next_decisions(10.0)
    assert starts(decisions) == []
    assert waits(decisions) == [70.0]
    decisions = policy.next_decisions(70.0)
    assert starts(decisions) == [("k", "fast")]
    # Second failure: 180 s; a failure within 30 s of it counts once.
    assert policy.on_machine_failed("fast", 80.0).until == 80.0 + 180.0
    assert policy.on_machine_failed("fast", 95.0).failures == 2
    assert policy.on_machine_failed("fast", 300.0).until == 300.0 + 540.0
    # The returned job went to the only machine left, and a success resets the count.
    decisions = policy.next_decisions(300.0)
    assert waits(decisions) == [840.0]
    policy.on_finished("j", "slow", 300.0, ok=True)
    assert starts(policy.next_decisions(300.0)) == [("k", "slow")]
    policy.on_finished("k", "slow", 1300.0, ok=True)
    assert policy.failures("slow") == 0
    assert policy.graph.finished


def test_backoff_base_is_a_parameter() -> None:
    policy = Policy([job("j", 1)], [machine("m")], backoff=Backoff(base=5.0))
    assert policy.on_machine_failed("m", 0.0).until == 5.0
    assert waits(policy.next_decisions(1.0)) == [5.0]
    assert starts(policy.next_decisions(5.0)) == [("j", "m")]


def test_report_for_lost_copy_is_ignored() -> None:
    policy = Policy([job("j", 5)], [machine("a"), machine("b")])
    assert starts(policy.next_decisions(0.0)) == [("j", "a")]
    policy.on_machine_failed("a", 1.0)
    assert policy.on_finished("j", "a", 2.0, ok=True).accepted is False
    assert starts(policy.next_decisions(2.0)) == [("j", "b")]


# Idle-tail speculation


def test_idle_fast_machine_copies_long_job_and_loser_is_cancelled() -> None:
    machines = [machine("fast", 4), machine("slow", 1), machine("fast2", 4)]
    policy = Policy([job("a", 40), job("long", 12)], machines, backoff=Backoff(base=3.0))
    policy.on_machine_failed("fast2", 0.0)  # away until t=3
    # a: fast until 10; long: 10 + 3 on fast vs 12 on slow -> slow.
    assert starts(policy.next_decisions(0.0)) == [("a", "fast"), ("long", "slow")]
    # a ends far earlier than estimated; fast idles while long has 10 s to go on slow.
    policy.on_finished("a", "fast", 2.0, ok=True)
    decisions = policy.next_decisions(2.0)
    assert decisions == [Speculate("long", "fast", 5.0, "slow")]
    assert sorted(policy.copies("long")) == ["fast", "slow"]
    # fast2 comes back idle, but a job never gets a second extra copy.
    assert policy.next_decisions(3.0) == []
    result = policy.on_finished("long", "fast", 5.0, ok=True)
    assert result.cancel == (Cancel("long", "slow"),)
    assert policy.running("slow") == []
    assert policy.on_finished("long", "slow", 12.0, ok=True).accepted is False
    assert policy.graph.finished


def test_job_within_its_slack_gets_no_copy_until_it_is_overdue() -> None:
    # The chain needs 48 / 4 = 12 s on fast; side (1 s on fast) may spend half its slack, so it
    # runs 4 s on slow. A copy on the idle fast slot would end it at 1 s, which ends no path
    # sooner and would take the slot c1 wants: none while side is expected to end in its slack.
    pool = [machine("fast", 4, slots=2), machine("slow", 1)]
    jobs = [job("c0", 16), job("c1", 16, "c0"), job("c2", 16, "c1"), job("side", 4)]
    policy = Policy(jobs, pool)
    assert policy.next_decisions(0.0) == [Start("c0", "fast", 4.0), Start("side", "slow", 4.0)]
    policy.on_finished("c0", "fast", 4.0, ok=True)
    assert policy.next_decisions(4.0) == [Start("c1", "fast", 8.0)]
    policy.on_finished("c1", "fast", 8.0, ok=True)
    assert policy.next_decisions(8.0) == [Start("c2", "fast", 12.0)]
    # Overdue, side is evidence its estimate was wrong: it is copied like any other job.
    policy.on_finished("c2", "fast", 12.0, ok=True)
    assert policy.next_decisions(12.0) == [Speculate("side", "fast", 13.0, "slow")]


def test_no_speculation_below_the_margin() -> None:
    # Copying would save 0.5 s: under the 1 s minimum gain.
    policy = Policy([job("a", 40), job("long", 12)], [machine("fast", 4), machine("slow", 1)])
    policy.next_decisions(0.0)
    policy.on_finished("a", "fast", 8.5, ok=True)
    assert policy.next_decisions(8.5) == []


def test_no_speculation_while_work_is_ready() -> None:
    policy = Policy(
        [job("a", 40), job("long", 12), job("later", 1, "a"), job("more", 30, "a")],
        [machine("fast", 4), machine("slow", 1)],
    )
    policy.next_decisions(0.0)
    policy.on_finished("a", "fast", 2.0, ok=True)
    decisions = policy.next_decisions(2.0)
    assert all(not isinstance(d, Speculate) for d in decisions)
    assert starts(decisions) == [("more", "fast")]


def test_estimate_update_reorders_ready_jobs() -> None:
    policy = Policy([job("a", 5), job("b", 1)], [machine("m")])
    policy.on_estimate("b", 50)
    assert starts(policy.next_decisions(0.0)) == [("b", "m")]


def test_lost_outputs_run_again_before_their_dependents() -> None:
    jobs = [job("a", 1), job("b", 1, "a"), job("c", 1, "b")]
    policy = Policy(jobs, [machine("m", slots=1), machine("n", slots=1)])
    assert starts(policy.next_decisions(0.0)) == [("a", "m")]
    policy.on_finished("a", "m", 1.0, ok=True)
    assert starts(policy.next_decisions(1.0)) == [("b", "m")]
    # b cannot get a's outputs (their only holder went away): b gives way, a runs again.
    policy.on_outputs_lost(["a"])
    assert policy.on_returned("b", "m")
    assert not policy.on_returned("b", "m")  # that copy is gone already
    assert starts(policy.next_decisions(2.0)) == [("a", "m")]
    policy.on_finished("a", "m", 3.0, ok=True)
    assert starts(policy.next_decisions(3.0)) == [("b", "m")]


def test_a_ready_job_whose_input_is_lost_is_not_started_until_it_is_rebuilt() -> None:
    jobs = [job("a", 1), job("b", 1, "a"), job("slow", 10)]
    policy = Policy(jobs, [machine("m", slots=1), machine("n", slots=1)])
    assert sorted(starts(policy.next_decisions(0.0))) == [("a", "n"), ("slow", "m")]
    policy.on_finished("a", "n", 1.0, ok=True)
    policy.on_outputs_lost(["a"])  # before b was started anywhere
    assert starts(policy.next_decisions(1.0)) == [("a", "n")]
    assert policy.graph.state("b").value == "pending"


def test_placement_with_transfer_costs_uses_the_current_estimate() -> None:
    transfer = BandwidthTransferCost(output_bytes={}, bandwidth={})
    policy = Policy([job("a", 10)], [machine("m", speed=2)], transfer=transfer)
    policy.on_estimate("a", 1.0)  # learned before it started
    (start,) = [d for d in policy.next_decisions(0.0) if isinstance(d, Start)]
    assert start.expected_finish == 0.5
