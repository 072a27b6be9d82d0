"""plan_jobs and preferLocalBuild: the jobs of derivations the local machine can build require
the feature only the local machine offers; the rest are left as they were. Every one is guessed
trivial and teaches the run's guesses nothing."""

from __future__ import annotations

from offload.names import LOCAL
from offload.scheduler.dag import Job
from offload.scheduler.policy import MachineSlotSpec, Policy, Start
from offload.scheduler.policy.guesses import Guesses, guessed_work
from offload.scheduler.run.learning import Learning
from offload.scheduler.run.plan import (
    BIG_PARALLEL_WORK,
    DEFAULT_WORK,
    PREFER_LOCAL,
    TRIVIAL_WORK,
    BuildPlan,
    plan_jobs,
)
from offload.store.drv import Derivation, DerivationOutput

X86 = "x86_64-linux"
LOCAL_SPEC = MachineSlotSpec(LOCAL, 1.0, 1, frozenset({X86}), frozenset({PREFER_LOCAL}))
FAST = MachineSlotSpec("fast", 4.0, 1, frozenset({X86, "aarch64-linux"}))


def drv(name: str, *, prefer_local: bool, system: str = X86) -> Derivation:
    env = {"name": name, "preferLocalBuild": "1" if prefer_local else ""}
    return Derivation.create(
        outputs={"out": DerivationOutput(f"/nix/store/{'a' * 32}-{name}", "", "")},
        input_drvs={},
        input_srcs=(),
        platform=system,
        builder="/bin/sh",
        args=(),
        env=env,
    )


def plan(**drvs: Derivation) -> BuildPlan:
    paths = {f"/nix/store/{'b' * 32}-{name}.drv": d for name, d in drvs.items()}
    return BuildPlan(paths, tuple(paths), dict.fromkeys(paths, ()), dict.fromkeys(paths, ()))


def features(jobs_plan: BuildPlan, local: MachineSlotSpec | None) -> dict[str, bool]:
    return {
        job.id.rsplit("-", 1)[1].removesuffix(".drv"): PREFER_LOCAL in job.required_features
        for job in plan_jobs(jobs_plan, None, local)
    }


def test_only_prefer_local_builds_the_local_machine_can_build_require_it() -> None:
    p = plan(
        env=drv("env", prefer_local=True),
        cc=drv("cc", prefer_local=False),
        arm=drv("arm", prefer_local=True, system="aarch64-linux"),
    )
    assert features(p, LOCAL_SPEC) == {"env": True, "cc": False, "arm": False}
    assert features(p, None) == {"env": False, "cc": False, "arm": False}  # no local slots


def test_the_policy_starts_a_prefer_local_build_on_the_local_machine_only() -> None:
    p = plan(env=drv("env", prefer_local=True), cc=drv("cc", prefer_local=False))
    policy = Policy(plan_jobs(p, None, LOCAL_SPEC), [FAST, LOCAL_SPEC])
    where = {
        d.job.rsplit("-", 1)[1]: d.machine
        for d in policy.next_decisions(0.0)
        if isinstance(d, Start)
    }
    assert where == {"env.drv": LOCAL, "cc.drv": "fast"}


def test_a_prefer_local_build_is_guessed_trivial_and_teaches_nothing() -> None:
    p = plan(
        env=drv("env", prefer_local=True),
        cc=drv("cc", prefer_local=False),
        ld=drv("ld", prefer_local=False),
    )
    path = {d.rsplit("-", 1)[1].removesuffix(".drv"): d for d in p.order}
    for local in (LOCAL_SPEC, None):  # built here or, without local slots, on a builder
        work = {j.id: j.work_estimate for j in plan_jobs(p, None, local)}
        assert work[path["env"]] == TRIVIAL_WORK
        assert work[path["cc"]] == DEFAULT_WORK
    policy = Policy(plan_jobs(p, None, LOCAL_SPEC), [FAST, LOCAL_SPEC])
    learning = Learning(p, None, wall=lambda: 0.0)
    # A trivial build done in 0.05 s: a real build is not taught that it is as short.
    learning.learn(path["env"], 1.0, 0.05, 0.0, policy)
    assert policy.graph.work(path["ld"]) == DEFAULT_WORK
    learning.learn(path["cc"], 4.0, 5.0, 0.0, policy)  # 20 s of work: that one teaches
    assert policy.graph.work(path["ld"]) == 20.0
    assert policy.graph.work(path["env"]) == TRIVIAL_WORK


def test_guesses_learn_from_neither_big_parallel_nor_prefer_local_jobs() -> None:
    jobs = [
        Job("t", TRIVIAL_WORK, (), X86, frozenset({PREFER_LOCAL})),
        Job("k", BIG_PARALLEL_WORK, (), X86, frozenset({"big-parallel"})),
        Job("a", DEFAULT_WORK, (), X86),
        Job("b", DEFAULT_WORK, (), X86),
    ]
    assert guessed_work(frozenset({PREFER_LOCAL}), 3.0) == TRIVIAL_WORK
    guesses = Guesses.for_jobs(jobs, dict.fromkeys("tkab", 1.0))
    assert guesses.observe("t", 0.05) == {}
    assert guesses.observe("k", 500.0) == {}
    assert guesses.observe("a", 2.0) == {"b": 2.0}
